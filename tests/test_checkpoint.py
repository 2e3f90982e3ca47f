"""Checkpoints: exact save/restore and resume of the BC training state, retention, atomicity under a kill,
changed configs, corrupt files, and loading a policy from a run directory alone."""

import dataclasses
import functools
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import ACTION_DIM, tasks
from rpl_jax import checkpoint, networks, phases, relabel, train
from rpl_jax.checkpoint import Checkpointer, CheckpointError
from rpl_jax.data import Demo, pad_demos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(hidden=(32, 32), **kwargs):
  return train.BCConfig(method='ril', relabel=relabel.RelabelConfig(5, 20, 4),
                        policy=networks.PolicyConfig(hidden=hidden), batch_size=16, updates_per_step=3, **kwargs)


def _config_from_json(c):
  """What a launcher does with read_config: the BCConfig back from its JSON form."""
  return train.BCConfig(**{**c, 'relabel': relabel.RelabelConfig(**c['relabel']),
                           'policy': networks.PolicyConfig(**c['policy'])})


@functools.lru_cache(maxsize=None)
def _demos():
  rng = np.random.default_rng(0)
  demos = []
  for t in (30, 45):
    obs = np.cumsum(rng.normal(scale=0.1, size=(t + 1, tasks.NQ)), axis=0)
    demos.append(Demo(obs.astype(np.float32), np.tanh(rng.normal(size=(t, ACTION_DIM))).astype(np.float32)))
  return pad_demos(demos)


@functools.lru_cache(maxsize=None)
def _setup(config):
  agent = train.make_agent(config)
  return agent, train.jit_train_step(agent, config), train.device_demos(_demos())


def _fresh_state(config, seed=0):
  return train.init_state(_setup(config)[0], config, _demos(), jax.random.key(seed))


def _unkey(tree):
  is_key = lambda x: jnp.issubdtype(getattr(x, 'dtype', np.float32), jax.dtypes.prng_key)
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _assert_identical(restored, expected):
  """Same structure, leaf types, dtypes (PRNG key types included) and bits."""
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert type(got) is type(want)
    assert getattr(got, 'dtype', None) == getattr(want, 'dtype', None)
  for got, want in zip(jax.tree.leaves(_unkey(restored)), jax.tree.leaves(_unkey(expected))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _toy_state(i):
  """A generic training state: device arrays, typed keys of two implementations, and host-side buffers and
  cursors (as an IRIL buffer or a data cursor would be held)."""
  return {'params': {'w': jnp.full((3, 4), i, jnp.float32), 'b': jnp.arange(4, dtype=jnp.float32) * i},
          'key': jax.random.key(i), 'rbg_key': jax.random.key(i, impl='rbg'), 'updates': jnp.int32(i),
          'buffer': np.arange(6, dtype=np.float64).reshape(2, 3) * i, 'cursor': i, 'epoch': np.int64(i)}


# --- exactness ------------------------------------------------------------------------------------


def test_a_trained_bc_state_restores_bit_for_bit(tmp_path):
  config = _config()
  _, step, demos = _setup(config)
  state, _ = step(_fresh_state(config), demos)
  with Checkpointer(str(tmp_path), dataclasses.asdict(config)) as ckpt:
    assert ckpt.save(1, state)
    restored = ckpt.restore(_fresh_state(config, seed=7))  # a target with other values, same shapes
  _assert_identical(restored, state)
  assert restored.key.dtype == state.key.dtype  # still a typed threefry key, not raw key data


def test_host_values_and_prng_implementations_survive(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt:
    ckpt.save(5, _toy_state(5))
    restored = ckpt.restore(_toy_state(0))
  _assert_identical(restored, _toy_state(5))
  assert jax.random.key_impl(restored['rbg_key']) == jax.random.key_impl(_toy_state(0)['rbg_key'])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x,
                          _toy_state(0))
  _assert_identical(checkpoint.load_state(str(tmp_path), abstract), _toy_state(5))


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
  config = _config()
  _, step, demos = _setup(config)

  def run(state, num_steps):
    history = []
    for _ in range(num_steps):
      state, metrics = step(state, demos)
      history.append(jax.tree.map(float, metrics))
    return state, history

  straight, straight_history = run(_fresh_state(config), 4)

  first, history = run(_fresh_state(config), 2)
  with Checkpointer(str(tmp_path), dataclasses.asdict(config)) as ckpt:
    ckpt.save(2, first, metrics=history[-1])
  del first  # the process dies here; the resumed run starts from the directory alone
  with Checkpointer(str(tmp_path), dataclasses.asdict(config)) as ckpt:
    resumed = ckpt.restore(_fresh_state(config, seed=3))
    assert ckpt.metrics() == history[-1]
  resumed, rest = run(resumed, 2)

  _assert_identical(resumed, straight)
  assert history + rest == straight_history


# --- retention and intervals ----------------------------------------------------------------------


def test_only_the_last_n_checkpoints_are_kept_and_the_latest_restores(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}, max_to_keep=2) as ckpt:
    for i in range(1, 5):
      assert ckpt.save(i, _toy_state(i))
    assert ckpt.all_steps() == [3, 4]
  assert sorted(os.listdir(tmp_path)) == ['3', '4', 'config.json']
  with Checkpointer(str(tmp_path), {'run': 'toy'}, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 4
    _assert_identical(ckpt.restore(_toy_state(0)), _toy_state(4))
    _assert_identical(ckpt.restore(_toy_state(0), step=3), _toy_state(3))


def test_save_interval_skips_steps_unless_forced(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}, save_interval_steps=2) as ckpt:
    assert ckpt.save(1, _toy_state(1))  # the first save of a run is never skipped
    assert not ckpt.save(3, _toy_state(3))
    assert ckpt.save(4, _toy_state(4))
    assert not ckpt.save(4, _toy_state(4))  # never over an existing step
    assert ckpt.save(5, _toy_state(5), force=True)
    assert ckpt.all_steps() == [1, 4, 5]


def test_nothing_to_restore_is_a_clear_error(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(CheckpointError, match='no checkpoint to restore'):
      ckpt.restore(_toy_state(0))
    ckpt.save(1, _toy_state(1))
    with pytest.raises(CheckpointError, match=r'no checkpoint at step 7; steps on disk: \[1\]'):
      ckpt.restore(_toy_state(0), step=7)
  with pytest.raises(CheckpointError, match='no such run directory'):
    checkpoint.load_state(str(tmp_path / 'missing'), _toy_state(0))


# --- atomicity ------------------------------------------------------------------------------------

# Saves step 1, then dies by SIGKILL during the save of step 2: after every file of step 2 is written to
# orbax's temporary directory and before the rename that commits it (the widest window a kill can hit).
# The hook is orbax's private commit step (orbax-checkpoint 0.12.x).
_KILLED_SAVER = textwrap.dedent('''
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from rpl_jax.checkpoint import Checkpointer

    def state(i):
      return {'w': jnp.full((64, 64), i, jnp.float32), 'cursor': i}

    ckpt = Checkpointer(sys.argv[1], {'run': 'killed'})
    ckpt.save(1, state(1))

    async def die(self):
      os.kill(os.getpid(), signal.SIGKILL)

    atomicity.AtomicRenameTemporaryPath.finalize = die
    ckpt.save(2, state(2))
''')


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path):
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  child = subprocess.run([sys.executable, '-c', _KILLED_SAVER, str(tmp_path)], env=env, capture_output=True,
                         timeout=120)
  assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
  assert glob.glob(str(tmp_path / '2.orbax-checkpoint-tmp*'))  # the unfinished step is on disk
  assert not (tmp_path / '2').exists()

  target = {'w': jnp.zeros((64, 64), jnp.float32), 'cursor': 0}
  assert checkpoint.read_config(str(tmp_path)) == {'run': 'killed'}
  _assert_identical(checkpoint.load_state(str(tmp_path), target), {'w': jnp.full((64, 64), 1.0), 'cursor': 1})
  with Checkpointer(str(tmp_path), {'run': 'killed'}) as ckpt:  # resuming the run
    assert ckpt.latest_step() == 1
    assert ckpt.save(2, {'w': jnp.full((64, 64), 2.0), 'cursor': 2})
    _assert_identical(ckpt.restore(target), {'w': jnp.full((64, 64), 2.0), 'cursor': 2})
  assert not glob.glob(str(tmp_path / '*.orbax-checkpoint-tmp*'))  # cleaned up on reopening


# --- changed configs and corrupt files --------------------------------------------------------------


def test_a_changed_config_warns_and_a_changed_shape_refuses(tmp_path):
  config = _config()
  with Checkpointer(str(tmp_path), dataclasses.asdict(config)) as ckpt:
    ckpt.save(1, _fresh_state(config))

  # Same shapes: warns about the entry, then resumes.
  lower_lr = _config(learning_rate=3e-4)
  with pytest.warns(UserWarning, match=r'changed config; differing entries: learning_rate\.'):
    ckpt = Checkpointer(str(tmp_path), dataclasses.asdict(lower_lr))
  with ckpt:
    _assert_identical(ckpt.restore(_fresh_state(lower_lr, seed=1)), _fresh_state(config))

  # A wider network: warns, and restoring refuses, naming the leaves.
  wider = _config(hidden=(64, 32))
  with pytest.warns(UserWarning, match=r'policy\.hidden'):
    ckpt = Checkpointer(str(tmp_path), dataclasses.asdict(wider))
  with ckpt, pytest.raises(CheckpointError) as error:
    ckpt.restore(_fresh_state(wider))
  message = str(error.value)
  assert str(tmp_path / '1') in message
  assert 'params/low/mlp/Dense_0/kernel: saved float32[60, 32], target float32[60, 64]' in message
  assert 'more' in message  # the optimizer's moments mismatch too; the list is capped



def test_a_state_of_another_structure_or_key_type_is_refused_by_leaf(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt:
    ckpt.save(1, _toy_state(1))
    other = _toy_state(0)
    other['extra'] = other.pop('cursor')
    other['key'] = jax.random.key_data(other['key'])
    other['rbg_key'] = jax.random.key(0, impl='unsafe_rbg')  # same key data shape as rbg
    with pytest.raises(CheckpointError) as error:
      ckpt.restore(other)
  message = str(error.value)
  assert 'extra: missing from the checkpoint' in message
  assert 'cursor: in the checkpoint but not in the target' in message
  assert 'key: saved as a PRNG key, target is an array' in message
  assert 'rbg_key: saved PRNG implementation rbg' in message


def test_a_field_without_arrays_on_one_side_only_is_no_mismatch(tmp_path):
  """A state field added after a checkpoint was written, None when its option is off (as rrf.RRFState.best),
  restores from that checkpoint; and a state saved with the field None restores into one without it."""
  with Checkpointer(str(tmp_path / 'old'), {'run': 'toy'}) as ckpt:
    ckpt.save(1, _toy_state(1))
    _assert_identical(ckpt.restore({**_toy_state(0), 'added': None}), {**_toy_state(1), 'added': None})
  with Checkpointer(str(tmp_path / 'new'), {'run': 'toy'}) as ckpt:
    ckpt.save(1, {**_toy_state(1), 'added': None})
    _assert_identical(ckpt.restore(_toy_state(0)), _toy_state(1))
    with pytest.raises(CheckpointError, match='added/x: missing from the checkpoint'):
      ckpt.restore({**_toy_state(0), 'added': {'x': jnp.zeros(2)}})


def test_config_json_follows_the_latest_checkpoint(tmp_path):
  with Checkpointer(str(tmp_path), {'lr': 1.0, 'hidden': (32, 32)}) as ckpt:
    ckpt.save(1, _toy_state(1))
  assert checkpoint.read_config(str(tmp_path)) == {'lr': 1.0, 'hidden': [32, 32]}
  with pytest.warns(UserWarning, match='lr'), Checkpointer(str(tmp_path), {'lr': 0.5, 'hidden': (32, 32)}) as ckpt:
    ckpt.save(2, _toy_state(2))
  assert checkpoint.read_config(str(tmp_path)) == {'lr': 0.5, 'hidden': [32, 32]}
  assert checkpoint.read_config(str(tmp_path), step=1) == {'lr': 1.0, 'hidden': [32, 32]}
  assert json.loads((tmp_path / 'config.json').read_text()) == {'lr': 0.5, 'hidden': [32, 32]}
  with pytest.raises(CheckpointError, match='JSON-serialisable'):
    Checkpointer(str(tmp_path / 'other'), {'lr': object()})


# orbax leaves a callback on its closed event loop when a read fails; harmless, but pytest reports it.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_corrupt_checkpoint_is_a_checkpoint_error_naming_the_step(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt:
    ckpt.save(1, _toy_state(1))
  data_files = glob.glob(str(tmp_path / '1' / 'state' / '**' / 'd' / '*'), recursive=True)
  assert data_files
  for path in data_files:
    with open(path, 'r+b') as f:
      f.write(b'\xff' * os.path.getsize(path))
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt, pytest.raises(CheckpointError) as error:
    ckpt.restore(_toy_state(0))
  assert str(tmp_path / '1') in str(error.value)

  (tmp_path / '1' / 'meta' / 'metadata').write_text('{not json')
  with pytest.raises(CheckpointError, match='unreadable checkpoint metadata'):
    checkpoint.load_state(str(tmp_path), _toy_state(0))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path):
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt:
    ckpt.save(1, _toy_state(1))
    ckpt.save(2, _toy_state(2))
  for path in glob.glob(str(tmp_path / '2' / 'state' / '**' / 'd' / '*'), recursive=True):
    with open(path, 'r+b') as f:
      f.write(b'\xff' * os.path.getsize(path))
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt, pytest.warns(UserWarning, match=str(tmp_path / '2')):
    step, state = ckpt.restore_latest_usable(_toy_state(0))
  assert step == 1
  _assert_identical(state, _toy_state(1))
  with Checkpointer(str(tmp_path / 'empty'), {'run': 'toy'}) as ckpt:
    assert ckpt.restore_latest_usable(_toy_state(0)) == (None, None)
  with Checkpointer(str(tmp_path), {'run': 'toy'}) as ckpt, pytest.warns(UserWarning, match='unusable'), \
       pytest.raises(checkpoint.CheckpointMismatch):
    ckpt.restore_latest_usable({**_toy_state(0), 'b': jnp.zeros(5)})  # step 1 no longer fits: refused, no fallback


# --- loading for evaluation -----------------------------------------------------------------------


def test_a_policy_loads_from_the_run_directory_alone(tmp_path):
  config = _config()
  agent, step, demos = _setup(config)
  state, _ = step(_fresh_state(config), demos)
  with Checkpointer(str(tmp_path), dataclasses.asdict(config)) as ckpt:
    ckpt.save(3, state)
  before = sorted(os.listdir(tmp_path))

  loaded_config = _config_from_json(checkpoint.read_config(str(tmp_path)))
  assert loaded_config == config
  loaded = checkpoint.load_state(str(tmp_path), _fresh_state(loaded_config, seed=9))
  assert sorted(os.listdir(tmp_path)) == before  # loading writes nothing

  obs, goal = _demos().observations[:, 0], _demos().observations[:, -1]
  act = jax.jit(lambda s: agent.low.policy(s.params['low'], s.normalizers['low'])(
      obs, goal, jax.random.key(0), deterministic=True))
  np.testing.assert_array_equal(act(loaded), act(state))


def test_a_phase_resumes_to_more_steps_and_refuses_fewer(tmp_path):
  """phases.run_phase continues a finished phase when asked for more steps (logging each step once),
  and refuses fewer than it has run, rather than returning the longer-trained state as if it were
  the shorter run's."""
  def run(total):
    step = lambda s: ({'n': s['n'] + 1}, {'n': s['n'] + 1})
    return phases.run_phase(str(tmp_path), 'count', {'total': total}, {'n': jnp.zeros((), jnp.int32)}, step, total,
                            checkpoint_every=1, max_to_keep=2, scalars=lambda m: {'n': float(m['n'])})

  assert int(run(3)['n']) == 3
  with pytest.warns(UserWarning, match='resuming with a changed config; differing entries: total'):
    assert int(run(5)['n']) == 5
  logged = [json.loads(line)['n'] for line in (tmp_path / 'metrics_count.jsonl').read_text().splitlines()]
  assert logged == [1, 2, 3, 4, 5]
  with pytest.raises(ValueError, match='has already run 5 steps, more than the 4 asked'):
    run(4)
