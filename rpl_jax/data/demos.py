"""The demo dataset format: unsegmented kitchen trajectories in checksummed `.npz` shards.

A demo is `(s_0, a_0, ..., s_T)`: `observations` float32 [T+1, 30] (30-d qpos) and `actions` float32
[T, 9] in [-1, 1], with T >= 1 varying per demo. A dataset is a directory:

  metadata.json      {"format": "rpl_jax.demos", "schema_version": 1, "obs_dim": 30, "action_dim": 9,
                      "backend": str, "seed": int | null, "demos_per_shard": int, "config": {...},
                      "shards": [{"index", "name", "num_demos", "num_steps", "size", "sha256",
                                  "seeds": [int] | null, "element_orders": [[str]] | null,
                                  "element_steps": [[int]] | null (optional)}, ...]}
  shard-00000.npz    observations float32 [sum(T+1), 30], actions float32 [sum(T), 9],
                     lengths int32 [num_demos] (T per demo); nothing else, read with allow_pickle=False.

Shards hold concatenated arrays so that a load is three reads and a split. Per-demo seeds, element
orders and element steps (the state index at which each element of the order was first complete)
live only in metadata.json: the arrays carry no segment labels, so learning code cannot see them;
only the oracle-segmentation baseline reads the steps (`read_element_steps`). Datasets written before
element steps were recorded lack the key.

A shard is listed in metadata.json only after its file has been atomically written (temp file in the
same directory, fsync, os.replace); an unlisted shard file is an interrupted write and gets replaced.
A listed shard is never rewritten, which makes a shard-by-shard generator resumable. One writer per
dataset at a time: metadata.json is rewritten whole (atomically) after each shard.
"""

import copy
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from rpl_jax.files import write_atomic

FORMAT = 'rpl_jax.demos'
SCHEMA_VERSION = 1
OBS_DIM = 30
ACTION_DIM = 9
METADATA = 'metadata.json'
_ARRAYS = ('observations', 'actions', 'lengths')
_SHARD_NAME = re.compile(r'shard-\d{5}\.npz')
# Leftovers of interrupted writes (see rpl_jax.files.write_atomic).
_TEMP_NAME = re.compile(r'\.(metadata\.json|shard-\d{5}\.npz)\w*\.tmp')
# Header fields that must match for a writer to resume into an existing dataset.
_HEADER = ('format', 'schema_version', 'obs_dim', 'action_dim', 'backend', 'seed', 'demos_per_shard', 'config')


class DatasetError(ValueError):
  """A dataset (or a demo about to be written to one) is missing, corrupt or inconsistent."""


class Demo(NamedTuple):
  """One unsegmented trajectory: observations [T+1, 30] float32, actions [T, 9] float32."""
  observations: np.ndarray
  actions: np.ndarray


class PaddedDemos(NamedTuple):
  """Demos padded to a common length for the device. Entries past `lengths[i]` are padding: the last
  state repeated in `observations[i, T_i + 1:]`, zeros in `actions[i, T_i:]`. Samplers must take
  windows from `lengths`, never from the padding."""
  observations: np.ndarray  # [N, T_max + 1, 30] float32
  actions: np.ndarray  # [N, T_max, 9] float32
  lengths: np.ndarray  # [N] int32


def shard_name(index: int) -> str:
  return f'shard-{index:05d}.npz'


def check_demo(observations: np.ndarray, actions: np.ndarray, where: str) -> None:
  """Raise DatasetError, naming `where` (file and demo), unless these arrays form a valid demo:
  shapes [T+1, 30] and [T, 9] with T >= 1, all finite, actions in [-1, 1]. Dtypes are the caller's job."""
  if observations.ndim != 2 or observations.shape[1] != OBS_DIM:
    raise DatasetError(f'{where}: observations must have shape [T+1, {OBS_DIM}], got {observations.shape}.')
  if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
    raise DatasetError(f'{where}: actions must have shape [T, {ACTION_DIM}], got {actions.shape}.')
  if actions.shape[0] < 1 or observations.shape[0] != actions.shape[0] + 1:
    raise DatasetError(f'{where}: need T >= 1 actions and T+1 observations, '
                       f'got {observations.shape[0]} observations and {actions.shape[0]} actions.')
  if not (np.isfinite(observations).all() and np.isfinite(actions).all()):
    raise DatasetError(f'{where}: non-finite (NaN or inf) observations or actions.')
  if np.abs(actions).max() > 1.0:
    raise DatasetError(f'{where}: actions outside [-1, 1] (max |a| = {np.abs(actions).max()}).')


def pad_demos(demos: Sequence[Demo]) -> PaddedDemos:
  """Stack demos of different lengths into fixed-shape arrays (see PaddedDemos for the padding)."""
  if not demos:
    raise DatasetError('cannot pad an empty list of demos.')
  lengths = np.array([len(d.actions) for d in demos], np.int32)
  t_max = int(lengths.max())
  observations = np.empty((len(demos), t_max + 1, OBS_DIM), np.float32)
  actions = np.zeros((len(demos), t_max, ACTION_DIM), np.float32)
  for i, (demo, t) in enumerate(zip(demos, lengths)):
    observations[i, :t + 1] = demo.observations
    observations[i, t + 1:] = demo.observations[-1]
    actions[i, :t] = demo.actions
  return PaddedDemos(observations, actions, lengths)


# --- metadata -------------------------------------------------------------------------------------


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The config as it reads back from JSON (tuples become lists), so that resume checks compare like with like."""
  try:
    return json.loads(json.dumps(dict(config), allow_nan=False))
  except (TypeError, ValueError) as e:
    raise DatasetError(f'config must be JSON-serialisable (e.g. dataclasses.asdict of the env config): {e}') from e


def _check_shard_entry(entry: Any, path: str, demos_per_shard: int) -> None:
  if not isinstance(entry, dict):
    raise DatasetError(f'{path}: each shard entry must be an object, got {entry!r}.')
  missing = {'index', 'name', 'num_demos', 'num_steps', 'size', 'sha256', 'seeds', 'element_orders'} - set(entry)
  if missing:
    raise DatasetError(f'{path}: shard entry {entry.get("name")!r} lacks {sorted(missing)}.')
  index = entry['index']
  if not isinstance(index, int) or index < 0 or entry['name'] != shard_name(index):
    raise DatasetError(f'{path}: shard entry {entry["name"]!r} does not match index {index!r}.')
  n = entry['num_demos']
  if not isinstance(n, int) or not 1 <= n <= demos_per_shard:
    raise DatasetError(f'{path}: {entry["name"]}: num_demos must be in [1, {demos_per_shard}], got {n!r}.')
  for key in ('seeds', 'element_orders', 'element_steps'):
    if entry.get(key) is not None and (not isinstance(entry[key], list) or len(entry[key]) != n):
      raise DatasetError(f'{path}: {entry["name"]}: {key} must be null or a list of {n} entries.')


def read_metadata(path: str) -> dict[str, Any]:
  """The validated metadata of the dataset in directory `path`."""
  meta_path = os.path.join(path, METADATA)
  if not os.path.isfile(meta_path):
    raise DatasetError(f'{meta_path}: no dataset metadata (is {path!r} a dataset directory?).')
  try:
    with open(meta_path, encoding='utf-8') as f:
      meta = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise DatasetError(f'{meta_path}: not valid JSON: {e}') from e
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    found = meta.get('format') if isinstance(meta, dict) else f'a JSON {type(meta).__name__}'
    raise DatasetError(f'{meta_path}: not an {FORMAT} dataset (found format {found!r}).')
  version = meta.get('schema_version')
  if not isinstance(version, int) or isinstance(version, bool):
    raise DatasetError(f'{meta_path}: schema_version must be an integer, got {version!r}.')
  if version != SCHEMA_VERSION:
    newer = ' (written by a newer rpl_jax; upgrade to read it)' if version > SCHEMA_VERSION else ''
    raise DatasetError(f'{meta_path}: unsupported schema_version {version}; this reader knows {SCHEMA_VERSION}{newer}.')
  missing = set(_HEADER + ('shards',)) - set(meta)
  if missing:
    raise DatasetError(f'{meta_path}: missing keys {sorted(missing)}.')
  if (meta['obs_dim'], meta['action_dim']) != (OBS_DIM, ACTION_DIM):
    raise DatasetError(f'{meta_path}: obs_dim/action_dim must be {OBS_DIM}/{ACTION_DIM}, '
                       f'got {meta["obs_dim"]}/{meta["action_dim"]}.')
  if not isinstance(meta['demos_per_shard'], int) or meta['demos_per_shard'] < 1:
    raise DatasetError(f'{meta_path}: demos_per_shard must be a positive integer, got {meta["demos_per_shard"]!r}.')
  if not isinstance(meta['shards'], list):
    raise DatasetError(f'{meta_path}: shards must be a list.')
  for entry in meta['shards']:
    _check_shard_entry(entry, meta_path, meta['demos_per_shard'])
  indices = [e['index'] for e in meta['shards']]
  if indices != sorted(set(indices)):
    raise DatasetError(f'{meta_path}: shard indices must be unique and ascending, got {indices}.')
  return meta


# --- reading --------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _read_shard(path: str, entry: Mapping[str, Any]) -> list[Demo]:
  """The demos of one shard, after checking its size, checksum, arrays and every demo."""
  if not os.path.isfile(path):
    raise DatasetError(f'{path}: shard listed in {METADATA} is missing.')
  size = os.path.getsize(path)
  if size != entry['size']:
    raise DatasetError(f'{path}: {size} bytes, {METADATA} says {entry["size"]} (truncated or modified).')
  if _sha256(path) != entry['sha256']:
    raise DatasetError(f'{path}: sha256 checksum mismatch (corrupt or modified).')
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
    raise DatasetError(f'{path}: unreadable shard: {e}') from e
  if sorted(arrays) != sorted(_ARRAYS):
    raise DatasetError(f'{path}: arrays must be exactly {sorted(_ARRAYS)}, got {sorted(arrays)}.')
  observations, actions, lengths = (arrays[k] for k in _ARRAYS)
  for name, array, dtype, ndim in (('observations', observations, np.float32, 2),
                                   ('actions', actions, np.float32, 2), ('lengths', lengths, np.int32, 1)):
    if array.dtype != dtype or array.ndim != ndim:
      raise DatasetError(f'{path}: {name} must be {np.dtype(dtype).name} with {ndim} dims, '
                         f'got {array.dtype} {array.shape}.')
  if len(lengths) != entry['num_demos'] or (lengths < 1).any():
    raise DatasetError(f'{path}: lengths {lengths.tolist()} must be {entry["num_demos"]} positive entries.')
  num_steps = int(lengths.sum(dtype=np.int64))
  if num_steps != entry['num_steps'] or len(actions) != num_steps or len(observations) != num_steps + len(lengths):
    raise DatasetError(f'{path}: lengths sum to {num_steps} ({METADATA}: num_steps {entry["num_steps"]}), so '
                       f'{num_steps} actions and {num_steps + len(lengths)} observations were expected; got '
                       f'{len(actions)} and {len(observations)}; lengths do not match the arrays.')
  action_ends = np.cumsum(lengths)[:-1]
  obs_ends = action_ends + np.arange(1, len(lengths))
  demos = [Demo(o, a) for o, a in zip(np.split(observations, obs_ends), np.split(actions, action_ends))]
  for i, demo in enumerate(demos):
    check_demo(demo.observations, demo.actions, f'{path}: demo {i}')
  return demos


def load_demos(path: str) -> list[Demo]:
  """Every demo of the dataset in directory `path`, in shard order, each validated."""
  meta = read_metadata(path)
  return [demo for entry in meta['shards'] for demo in _read_shard(os.path.join(path, entry['name']), entry)]


def read_element_steps(path: str) -> np.ndarray:
  """int32 [N, K], in load order: per demo, the state index at which each element of its order was
  first complete, as the generator recorded it; DatasetError if the dataset lacks them or they do not
  fit the demos."""
  meta = read_metadata(path)
  steps = [s for entry in meta['shards'] for s in (entry.get('element_steps') or [None] * entry['num_demos'])]
  if any(s is None for s in steps) or len({len(s) for s in steps}) != 1:
    raise DatasetError(f'{path}: the dataset does not record per-demo element steps of equal count (datasets '
                       'generated before they were recorded lack them); regenerate it with generate_demos.py.')
  return np.asarray(steps, np.int32)


def load_padded(path: str) -> PaddedDemos:
  """The dataset in `path` as fixed-shape arrays, ready for `jax.device_put`."""
  return pad_demos(load_demos(path))


# --- writing --------------------------------------------------------------------------------------


def _remove_files(path: str, keep_dataset: bool) -> None:
  """Remove interrupted writes' temp files and, unless `keep_dataset`, the metadata and shards too;
  never anything else a user keeps in the directory."""
  for name in os.listdir(path):
    if _TEMP_NAME.fullmatch(name) or not keep_dataset and (name == METADATA or _SHARD_NAME.fullmatch(name)):
      os.remove(os.path.join(path, name))


class DatasetWriter:
  """Writes a dataset shard by shard.

  A new directory (or one without a dataset) starts a dataset. An existing dataset is an error unless
  `resume=True` (continue it: the header must match exactly, see `_HEADER`) or `overwrite=True`
  (delete its metadata and shards, then start afresh). So a resumable generator always passes
  `resume=True` and skips the shards in `written_shards()`.
  """

  def __init__(self, path: str, *, config: Mapping[str, Any], backend: str, seed: int | None,
               demos_per_shard: int, resume: bool = False, overwrite: bool = False):
    if resume and overwrite:
      raise ValueError('pass at most one of resume=True and overwrite=True.')
    if demos_per_shard < 1:
      raise ValueError(f'demos_per_shard must be >= 1, got {demos_per_shard}.')
    self.path = path
    header = dict(format=FORMAT, schema_version=SCHEMA_VERSION, obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                  backend=backend, seed=seed, demos_per_shard=demos_per_shard, config=_json_config(config))
    os.makedirs(path, exist_ok=True)
    meta_path = os.path.join(path, METADATA)
    if overwrite:
      _remove_files(path, keep_dataset=False)
    elif os.path.exists(meta_path):
      if not resume:
        raise DatasetError(f'{path}: a dataset already exists here; pass resume=True to continue it '
                           f'or overwrite=True to replace it.')
      existing = read_metadata(path)
      differ = [k for k in _HEADER if existing[k] != header[k]]
      if differ:
        theirs, ours = ({k: h[k] for k in differ} for h in (existing, header))
        raise DatasetError(f'{meta_path}: cannot resume, {differ} differ: existing {theirs}, requested {ours}.')
      _remove_files(path, keep_dataset=True)
      self._meta = existing
      return
    elif any(_SHARD_NAME.fullmatch(n) for n in os.listdir(path)):
      raise DatasetError(f'{path}: shard files without {METADATA}; pass overwrite=True to replace them.')
    self._meta = {**header, 'shards': []}
    self._write_metadata()

  @property
  def metadata(self) -> dict[str, Any]:
    return copy.deepcopy(self._meta)  # the writer's view must change only through write_shard

  def written_shards(self) -> frozenset[int]:
    """Indices of the shards listed in metadata (complete, checksummed, never rewritten)."""
    return frozenset(e['index'] for e in self._meta['shards'])

  def write_shard(self, index: int, demos: Sequence[Demo], *, seeds: Sequence[int] | None = None,
                  element_orders: Sequence[Sequence[str]] | None = None,
                  element_steps: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Validate and write shard `index` atomically, then list it in metadata; returns its entry.

    `seeds`, `element_orders` and `element_steps` (one per demo; steps are state indices in [0, T])
    are kept in metadata only, never in the arrays."""
    if index in self.written_shards():
      raise DatasetError(f'{os.path.join(self.path, shard_name(index))}: shard {index} is already written; '
                         'a listed shard is never rewritten.')
    if index < 0:
      raise ValueError(f'shard index must be >= 0, got {index}.')
    if not 1 <= len(demos) <= self._meta['demos_per_shard']:
      raise ValueError(f'a shard holds 1 to {self._meta["demos_per_shard"]} demos, got {len(demos)}.')
    for name, values in (('seeds', seeds), ('element_orders', element_orders), ('element_steps', element_steps)):
      if values is not None and len(values) != len(demos):
        raise ValueError(f'{name} must have one entry per demo ({len(demos)}), got {len(values)}.')
    if element_steps is not None and any(not 0 <= int(t) <= len(d.actions) for d, steps in zip(demos, element_steps)
                                         for t in steps):
      raise ValueError('element_steps must be state indices within each demo, [0, T].')
    path = os.path.join(self.path, shard_name(index))
    observations = [np.asarray(d.observations, np.float32) for d in demos]
    actions = [np.asarray(d.actions, np.float32) for d in demos]
    for i, (o, a) in enumerate(zip(observations, actions)):
      check_demo(o, a, f'{path}: demo {i} (not written)')
    arrays = dict(observations=np.concatenate(observations), actions=np.concatenate(actions),
                  lengths=np.array([len(a) for a in actions], np.int32))
    write_atomic(path, lambda f: np.savez(f, **arrays))
    entry = dict(index=index, name=shard_name(index), num_demos=len(demos), num_steps=len(arrays['actions']),
                 size=os.path.getsize(path), sha256=_sha256(path),
                 seeds=None if seeds is None else [int(s) for s in seeds],
                 element_orders=None if element_orders is None else [[str(e) for e in o] for o in element_orders],
                 element_steps=None if element_steps is None else [[int(t) for t in s] for s in element_steps])
    self._meta['shards'] = sorted(self._meta['shards'] + [entry], key=lambda e: e['index'])
    self._write_metadata()
    return dict(entry)

  def _write_metadata(self) -> None:
    text = json.dumps(self._meta, indent=1, allow_nan=False).encode('utf-8')
    write_atomic(os.path.join(self.path, METADATA), lambda f: f.write(text))
