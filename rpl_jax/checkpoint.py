"""Training checkpoints: an orbax CheckpointManager over any training-state pytree, with the run config beside it.

A run directory holds

  config.json        the run config (JSON), written when the run starts and rewritten after a save that
                     follows a resume with a changed config, so that it describes the latest checkpoint
  <step>/state       the state pytree (orbax StandardSave); typed PRNG keys are stored as their key data
  <step>/meta        JSON: {"config": the run config, "metrics": the metrics passed to `save`,
                     "prng_impls": {leaf path: PRNG implementation name}}

Each step is written to a temporary directory and renamed on commit, so a kill during a save leaves the
earlier steps intact; the leftovers are removed when the next Checkpointer opens the directory. Only the
last `max_to_keep` steps are kept, and a step is deleted only after a newer one has committed. One run per
directory at a time; in a multi-host run every process opens it and saves together (orbax), and
process 0 writes config.json. A state saved from one mesh restores onto another (a target state
placed on the new devices): the device count may change between save and restore.

`restore` rebuilds a state shaped like an example state (built the normal way, or from
jax.ShapeDtypeStruct leaves): every leaf's saved shape and dtype are checked against it first, so a
changed network size fails with the leaf's path instead of restoring into the wrong shapes.
"""

import contextlib
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rpl_jax.files import write_atomic

CONFIG = 'config.json'
_STATE = 'state'
_META = 'meta'
_MAX_LISTED = 12  # mismatched leaves named in an error


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, or does not fit the state it should restore into."""


class CheckpointMismatch(CheckpointError):
  """A readable checkpoint whose saved shapes or structure do not fit the target state."""


# --- config ---------------------------------------------------------------------------------------


def _json_config(config: dict[str, Any]) -> dict[str, Any]:
  """The config as it reads back from JSON (tuples become lists), so that comparisons see like with like."""
  try:
    return json.loads(json.dumps(dict(config), allow_nan=False))
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'config must be JSON-serialisable (e.g. dataclasses.asdict of the config): {e}') from e


_ABSENT = object()


def _config_diff(old: Any, new: Any, prefix: str = '') -> list[str]:
  """Dotted paths of the entries that differ between two JSON configs (or that only one has)."""
  if isinstance(old, dict) and isinstance(new, dict):
    return [path for key in sorted(set(old) | set(new))
            for path in _config_diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f'{prefix}{key}.')]
  return [] if old == new else [prefix.rstrip('.') or '<root>']


def _write_json_atomic(path: str, value: Any) -> None:
  """Written by process 0 only: in a multi-host run every process opens the Checkpointer (orbax saves
  the state collectively)."""
  if jax.process_index():
    return
  text = json.dumps(value, indent=2, sort_keys=True).encode('utf-8')
  write_atomic(path, lambda f: f.write(text))


def _read_root_config(directory: str) -> dict[str, Any] | None:
  path = os.path.join(directory, CONFIG)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{path}: not valid JSON: {e}') from e


# --- state <-> stored form ------------------------------------------------------------------------


def _path_name(path) -> str:
  """A leaf path as 'params/low/mlp/Dense_0/kernel': the same for a state and for orbax's metadata tree
  (which stores struct fields and named tuples as dicts)."""
  parts = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def _is_key(leaf) -> bool:
  return jnp.issubdtype(getattr(leaf, 'dtype', np.float32), jax.dtypes.prng_key)


def _to_stored(state) -> tuple[Any, dict[str, str]]:
  """The state with typed PRNG keys as key data and host values as numpy arrays (orbax restores neither
  typed keys nor numpy scalars), and the PRNG implementation of each key leaf."""
  impls = {}

  def convert(path, leaf):
    if _is_key(leaf):
      impls[_path_name(path)] = str(jax.random.key_impl(leaf))
      return jax.random.key_data(leaf)
    return leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)

  return jax.tree_util.tree_map_with_path(convert, state), impls


def _abstract_stored(leaf):
  """What restoring `leaf` of a target state reads: a ShapeDtypeStruct for a device array (restored as a
  jax.Array) or a numpy array for a host value (restored as numpy)."""
  if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):  # restored onto the target's sharding
    stored = jax.eval_shape(jax.random.key_data, leaf) if _is_key(leaf) else leaf
    return jax.ShapeDtypeStruct(stored.shape, stored.dtype, sharding=getattr(leaf, 'sharding', None))
  return np.zeros_like(np.asarray(leaf))


def _from_stored(target_leaf, stored, impl: str | None):
  if _is_key(target_leaf):
    return jax.random.wrap_key_data(stored, impl=impl)
  if isinstance(target_leaf, (jax.Array, jax.ShapeDtypeStruct)):
    return stored
  if isinstance(target_leaf, np.ndarray):
    return np.asarray(stored)
  return type(target_leaf)(np.asarray(stored).item())  # numpy or Python scalar


def _check_fits(target_state, saved_tree, impls: dict[str, str], where: str) -> None:
  """Raise CheckpointError naming every leaf whose saved shape, dtype or PRNG implementation differs from
  the target's, and the leaves that only one side has."""
  saved = {_path_name(p): m for p, m in jax.tree_util.tree_leaves_with_path(saved_tree)}
  problems = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(target_state):
    name = _path_name(path)
    if name not in saved:
      problems.append(f'{name}: missing from the checkpoint')
      continue
    want, got = _abstract_stored(leaf), saved.pop(name)
    if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
      problems.append(f'{name}: saved {np.dtype(got.dtype).name}{list(got.shape)}, '
                      f'target {np.dtype(want.dtype).name}{list(want.shape)}')
    elif _is_key(leaf) != (name in impls):
      problems.append(f'{name}: saved as {"a PRNG key" if name in impls else "an array"}, target is '
                      f'{"a PRNG key" if _is_key(leaf) else "an array"}')
    elif _is_key(leaf):
      restored = jax.eval_shape(lambda d, impl=impls[name]: jax.random.wrap_key_data(d, impl=impl), want)
      if restored.dtype != leaf.dtype:
        problems.append(f'{name}: saved PRNG implementation {impls[name]}, target key dtype {leaf.dtype}')
  problems += [f'{name}: in the checkpoint but not in the target' for name in sorted(saved)]
  if problems:
    more = [f'... and {len(problems) - _MAX_LISTED} more'] if len(problems) > _MAX_LISTED else []
    raise CheckpointMismatch(f'{where}: the checkpoint does not fit the target state (was the config, e.g. a '
                          f'network size, changed?):\n  ' + '\n  '.join(problems[:_MAX_LISTED] + more))


# --- manager --------------------------------------------------------------------------------------


def _manager(directory: str, max_to_keep: int | None = None, save_interval_steps: int = 1,
             read_only: bool = False) -> ocp.CheckpointManager:
  if read_only:  # orbax would otherwise warn that it overrides these
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, cleanup_tmp_directories=True,
        enable_async_checkpointing=False)  # save returns once the step has committed
  # Registered up front: a manager that has not saved in this process cannot read an item it has no handler for.
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, save, restore in ((_STATE, ocp.args.StandardSave, ocp.args.StandardRestore),
                              (_META, ocp.args.JsonSave, ocp.args.JsonRestore)):
    registry.add(item, save)
    registry.add(item, restore)
  return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def _resolve_step(manager: ocp.CheckpointManager, directory: str, step: int | None) -> int:
  steps = list(manager.all_steps())
  if step is None:
    if not steps:
      raise CheckpointError(f'{directory}: no checkpoint to restore.')
    return max(steps)
  if step not in steps:
    raise CheckpointError(f'{directory}: no checkpoint at step {step}; steps on disk: {sorted(steps)}.')
  return step


def _read_meta(manager: ocp.CheckpointManager, directory: str, step: int) -> dict[str, Any]:
  try:
    return manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
  except Exception as e:  # orbax raises assorted types from deep inside; name the step instead
    raise CheckpointError(f'{os.path.join(directory, str(step))}: unreadable checkpoint metadata '
                          f'(corrupt or incomplete?): {type(e).__name__}: {e}') from e


def _restore(manager: ocp.CheckpointManager, directory: str, target_state, step: int | None):
  step = _resolve_step(manager, directory, step)
  where = os.path.join(directory, str(step))
  meta = _read_meta(manager, directory, step)
  try:
    saved_tree = manager.item_metadata(step)[_STATE]
  except Exception as e:
    raise CheckpointError(f'{where}: unreadable state metadata (corrupt or incomplete?): '
                          f'{type(e).__name__}: {e}') from e
  impls = meta.get('prng_impls', {})
  saved_tree = getattr(saved_tree, 'tree', saved_tree)
  _check_fits(target_state, saved_tree, impls, where)
  # Read in the saved tree's structure and match leaves by name, so that a field that holds no arrays
  # (None) on one side only, e.g. one added to a state after the checkpoint was written, is no mismatch.
  leaves = jax.tree_util.tree_leaves_with_path(target_state)
  wanted = {_path_name(path): _abstract_stored(leaf) for path, leaf in leaves}
  item = jax.tree_util.tree_map_with_path(lambda path, _: wanted[_path_name(path)], saved_tree)
  try:
    stored = manager.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(item)}))[_STATE]
  except Exception as e:
    raise CheckpointError(f'{where}: cannot read the saved state (corrupt or incomplete?): '
                          f'{type(e).__name__}: {e}') from e
  values = {_path_name(path): value for path, value in jax.tree_util.tree_leaves_with_path(stored)}
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _from_stored(leaf, values[_path_name(path)], impls.get(_path_name(path))), target_state)


class Checkpointer:
  """Saves and restores one run's training state in `directory`, with the run config beside it.

  If the directory already holds a config.json that differs from `config`, a warning names the differing
  entries; `restore` then refuses (CheckpointError) if the saved shapes no longer fit the new state.
  """

  def __init__(self, directory: str, config: dict[str, Any], max_to_keep: int | None = 3,
               save_interval_steps: int = 1):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1 or None (keep all), got {max_to_keep}.')
    if save_interval_steps < 1:
      raise ValueError(f'save_interval_steps must be >= 1, got {save_interval_steps}.')
    self.directory = os.path.abspath(directory)
    self.config = _json_config(config)
    os.makedirs(self.directory, exist_ok=True)
    saved = _read_root_config(self.directory)
    if saved is None:
      _write_json_atomic(os.path.join(self.directory, CONFIG), self.config)
    self._config_written = saved is None or saved == self.config  # config.json holds self.config
    if not self._config_written:
      warnings.warn(f'{self.directory}: resuming with a changed config; differing entries: '
                    f'{", ".join(_config_diff(saved, self.config))}.', stacklevel=2)
    self._manager = _manager(self.directory, max_to_keep, save_interval_steps)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, metrics: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Write `state` (with `metrics`, JSON-able scalars or arrays) as `step`, unless `step` is not after
    the latest step, or is off the `save_interval_steps` grid (force overrides; orbax always saves into
    an empty directory). Returns whether it saved; a saved step has committed when this returns."""
    stored, impls = _to_stored(state)
    meta = {'config': self.config, 'prng_impls': impls,
            'metrics': None if metrics is None else jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)}
    saved = self._manager.save(step, args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardSave(stored), _META: ocp.args.JsonSave(meta)}), force=force)
    self._manager.wait_until_finished()
    if saved and not self._config_written:  # config.json now describes the latest checkpoint
      _write_json_atomic(os.path.join(self.directory, CONFIG), self.config)
      self._config_written = True
    return saved

  def restore(self, target_state, step: int | None = None):
    """The state saved at `step` (default: the latest), with the structure, dtypes and PRNG key types of
    `target_state`."""
    return _restore(self._manager, self.directory, target_state, step)

  def restore_latest_usable(self, target_state) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that restores; (None, None) when there is none. A
    corrupt newer checkpoint is skipped with a warning naming it, so a crash that damaged the last
    save costs only the steps since the one before."""
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(target_state, step)
      except CheckpointMismatch:
        raise
      except CheckpointError as e:
        warnings.warn(f'skipping an unusable checkpoint: {e}', stacklevel=2)
    return None, None

  def metrics(self, step: int | None = None) -> dict[str, Any] | None:
    """The metrics saved with `step` (default: the latest)."""
    step = _resolve_step(self._manager, self.directory, step)
    return _read_meta(self._manager, self.directory, step)['metrics']

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


@contextlib.contextmanager
def _reading(directory: str):
  """A read-only manager over an existing run directory: it neither writes, cleans up nor deletes."""
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such run directory.')
  manager = _manager(directory, read_only=True)
  try:
    yield manager
  finally:
    manager.close()


def read_config(directory: str, step: int | None = None) -> dict[str, Any]:
  """The config of the checkpoint at `step` (default: the latest); config.json if there is no checkpoint."""
  directory = os.path.abspath(directory)
  with _reading(directory) as manager:
    if step is None and manager.latest_step() is None:
      config = _read_root_config(directory)
      if config is None:
        raise CheckpointError(f'{directory}: neither a checkpoint nor {CONFIG} (is it a run directory?).')
      return config
    return _read_meta(manager, directory, _resolve_step(manager, directory, step))['config']


def latest_step(directory: str) -> int | None:
  """The newest checkpointed step of a run directory (None if it has none), read without writing to it."""
  with _reading(os.path.abspath(directory)) as manager:
    return manager.latest_step()


def load_state(directory: str, target_state, step: int | None = None):
  """Restore from a run directory alone, without writing to it (e.g. for evaluation or videos): build
  `target_state` from `read_config(directory)`, then load the checkpoint at `step` (default: the latest)."""
  directory = os.path.abspath(directory)
  with _reading(directory) as manager:
    return _restore(manager, directory, target_state, step)
