"""Reads D4RL-format kitchen HDF5 files into our demo structure (`rpl_jax.data.demos.Demo`).

D4RL's kitchen files store one row per step: `observations` [N, 60] (the 30-d qpos, then a 30-d goal),
`actions` [N, 9], and `terminals` / `timeouts` [N] that end episodes; the file's end ends the last one.
They store no next observation, so an episode of K rows becomes a demo of K states and K - 1 actions:
the last row's action has no recorded outcome and is dropped. A one-row episode holds no transition
and is skipped. Values are cast to float32. The goal half of the observations is returned beside the
demos, never inside them.
"""

from typing import NamedTuple

import h5py
import numpy as np

from rpl_jax.data.demos import ACTION_DIM, OBS_DIM, DatasetError, Demo, check_demo

_KEYS = ('observations', 'actions', 'terminals', 'timeouts')


class D4RLDemos(NamedTuple):
  demos: list[Demo]
  goals: list[np.ndarray]  # per demo, float32 [T+1, 30]: the goal half of the rows its states came from


def _read(path: str) -> dict[str, np.ndarray]:
  try:
    with h5py.File(path, 'r') as f:
      missing = [k for k in _KEYS if k not in f]
      if missing:
        raise DatasetError(f'{path}: missing D4RL keys {missing}; found {sorted(f.keys())}.')
      return {k: f[k][()] for k in _KEYS}
  except OSError as e:  # not HDF5, truncated, or unreadable
    raise DatasetError(f'{path}: cannot read as HDF5: {e}') from e


def load_d4rl(path: str, *, clip_actions: bool = False) -> D4RLDemos:
  """The episodes of a D4RL kitchen file as demos (see the module docstring for the split).

  Actions must lie in [-1, 1]; `clip_actions=True` clips them first, for files recorded with slightly
  wider actions."""
  data = _read(path)
  observations, actions = data['observations'], data['actions']
  if observations.ndim != 2 or observations.shape[1] != 2 * OBS_DIM or len(observations) == 0:
    raise DatasetError(f'{path}: observations must have shape [N >= 1, {2 * OBS_DIM}], got {observations.shape}.')
  n = len(observations)
  if actions.shape != (n, ACTION_DIM):
    raise DatasetError(f'{path}: actions must have shape ({n}, {ACTION_DIM}), got {actions.shape}.')
  for key in ('terminals', 'timeouts'):
    if data[key].shape != (n,):
      raise DatasetError(f'{path}: {key} must have shape ({n},), got {data[key].shape}.')
  # Contiguous float32 halves, so that each demo is a plain slice, as from our own format.
  states = np.ascontiguousarray(observations[:, :OBS_DIM], np.float32)
  goal_part = np.ascontiguousarray(observations[:, OBS_DIM:], np.float32)
  actions = actions.astype(np.float32)
  if clip_actions:
    actions = np.clip(actions, -1.0, 1.0)
  elif np.abs(actions).max() > 1.0:
    row = int(np.argmax(np.abs(actions).max(axis=1)))
    raise DatasetError(f'{path}: actions outside [-1, 1] (row {row}: {actions[row].tolist()}); '
                       'pass clip_actions=True to clip them.')
  ends = np.flatnonzero((data['terminals'] != 0) | (data['timeouts'] != 0)) + 1
  bounds = np.unique(np.concatenate([[0], ends, [n]]))
  demos, goals = [], []
  for episode, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
    if stop - start < 2:
      continue
    demo = Demo(states[start:stop], actions[start:stop - 1])
    check_demo(*demo, f'{path}: episode {episode} (rows {start}..{stop - 1})')
    demos.append(demo)
    goals.append(goal_part[start:stop])
  return D4RLDemos(demos, goals)
