"""Data parallelism (rpl_jax.parallel): the RIL and RRF steps on 4 virtual CPU devices against the
same steps on 1, checkpoints restored across device counts, and the validation errors.

The device count of a process is fixed when JAX starts, so the 4-device checks run this file as a
script in a subprocess with --xla_force_host_platform_device_count=4 (`python tests/test_parallel.py
<check>`); a check fails its test by raising there.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from rpl_jax import networks, parallel, rrf, train
from rpl_jax.checkpoint import Checkpointer
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.relabel import RelabelConfig

DEVICES = 4
WINDOWS = RelabelConfig(window_low=3, window_high=6, horizon=4)
BC = train.BCConfig(relabel=WINDOWS, policy=networks.PolicyConfig(hidden=(16,)), batch_size=32, updates_per_step=3)
GOALS = ('microwave-kettle-topknob-hinge', 'kettle-bottomknob-switch-slide')


def demos() -> PaddedDemos:
  rng = np.random.default_rng(0)
  observations = np.asarray(tasks.INIT_QPOS, np.float32) + 0.05 * rng.normal(size=(4, 13, tasks.NQ)).astype(np.float32)
  return PaddedDemos(observations, rng.uniform(-1, 1, size=(4, 12, 9)).astype(np.float32),
                     np.array([12, 10, 9, 7], np.int32))


def close(a, b, rtol: float, atol: float) -> None:
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def on_all_devices(tree, mesh) -> None:
  for leaf in jax.tree.leaves(tree):
    assert leaf.sharding.mesh.devices.size == mesh.devices.size, leaf.sharding


# --- the 4-device checks (run in the subprocess) ---------------------------------------------------


def ril_results(mesh, check_all_reduce: bool = False):
  """Parameters and metrics after two RIL calls on `mesh`."""
  agent, data = train.make_agent(BC), demos()
  state = train.init_state(agent, BC, data, jax.random.key(0))
  state, device_demos = parallel.put((state, train.device_demos(data)), mesh)
  step = train.jit_train_step(agent, BC, mesh)
  for _ in range(2):
    state, metrics = step(state, device_demos)
  on_all_devices(state, mesh)
  if check_all_reduce:
    assert 'all-reduce' in step.lower(state, device_demos).compile().as_text(), 'no cross-device reduction'
  return parallel.fetch((state.params, metrics))


def rrf_results(env, mesh, check_all_reduce: bool = False):
  """One per-goal IRIL iteration (rollout, relabeled BC pools, NPG with CG, value fit) over 2 goals
  on `mesh`: the low level, the value nets, the IRIL buffer, the metrics and the low level's start."""
  agent, data = train.make_agent(BC), demos()
  bc_state = train.init_state(agent, BC, data, jax.random.key(0))
  config = rrf.RRFConfig(variant='iril', num_envs=8, episode_steps=8, low_reward='euclidean', relabel=WINDOWS,
                         value_hidden=(8,), value_batch_size=16, bc_batch_size=16, buffer_episodes=8)
  goals = jnp.asarray(np.stack([tasks.goal_state(g) for g in GOALS]), jnp.float32)
  keys = jax.random.split(jax.random.key(1), len(GOALS))
  state = jax.vmap(lambda k: rrf.init_state(agent, config, bc_state.params, bc_state.normalizers, k))(keys)
  state, goal_states = parallel.put((state, goals), mesh, parallel.GOAL)
  step = rrf.jit_rrf_step(env, agent, config, per_goal=True, mesh=mesh)
  device_demos = parallel.put(train.device_demos(data), mesh)
  if check_all_reduce:
    hlo = step.lower(state, goal_states, device_demos).compile().as_text()
    assert 'all-reduce' in hlo, 'no cross-device reduction in the RRF step'
  state, metrics = step(state, goal_states, device_demos)
  on_all_devices(state, mesh)
  tuned = parallel.fetch((state.params['low'], state.values, state.buffer.episodes, metrics))
  start = jax.device_get(bc_state.params['low'])
  moved = max(float(np.max(np.abs(p - s[None]))) for p, s in zip(jax.tree.leaves(tuned[0]), jax.tree.leaves(start)))
  assert moved > 1e-4, 'the NPG step did not move the low level'
  return tuned


def check_ril_step():
  """Two RIL calls: the same parameters on 1 and 4 devices; the gradient all-reduces across them."""
  reference = ril_results(parallel.make_mesh(devices=jax.devices()[:1]))
  close(ril_results(parallel.make_mesh(), check_all_reduce=True), reference, rtol=1e-5, atol=1e-6)
  close(ril_results(parallel.make_mesh(data=2, goal=2)), reference, rtol=1e-5, atol=1e-6)


def check_rrf_step():
  """One per-goal RRF iteration: the same update and metrics on 1 device, 4 data devices and 2 goals
  x 2 data devices."""
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  reference = rrf_results(env, parallel.make_mesh(devices=jax.devices()[:1]))
  close(rrf_results(env, parallel.make_mesh(), check_all_reduce=True), reference, rtol=1e-4, atol=1e-5)
  close(rrf_results(env, parallel.make_mesh(data=2, goal=2)), reference, rtol=1e-4, atol=1e-5)


def check_two_processes(process_id: str, port: str, directory: str):
  """Two processes of 2 devices each (jax.distributed, gloo): RIL and RRF on a 2 goal x 2 data mesh
  across both equal this process's first device alone; a checkpoint saved from the 4 devices
  restores onto them and onto one local device; only process 0 is the writer."""
  parallel.initialize_distributed(f'localhost:{port}', 2, int(process_id))
  assert jax.process_count() == 2 and jax.device_count() == DEVICES and len(jax.local_devices()) == 2
  assert parallel.is_writer() == (process_id == '0')
  local, spanning = parallel.make_mesh(devices=jax.local_devices()[:1]), parallel.make_mesh(data=2, goal=2)
  close(ril_results(spanning), ril_results(local), rtol=1e-5, atol=1e-6)
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  close(rrf_results(env, spanning), rrf_results(env, local), rtol=1e-4, atol=1e-5)
  state = {'params': jnp.arange(12.0).reshape(2, 6), 'key': jax.random.split(jax.random.key(3), 2)}
  with Checkpointer(directory, {'run': 1}) as checkpoints:
    checkpoints.save(1, parallel.put(state, spanning, parallel.GOAL))
    for mesh in (spanning, local):
      restored = checkpoints.restore(parallel.put(jax.tree.map(jnp.zeros_like, state), mesh, parallel.GOAL))
      np.testing.assert_array_equal(parallel.fetch(restored['params']), state['params'])
      np.testing.assert_array_equal(parallel.fetch(jax.random.key_data(restored['key'])), jax.random.key_data(state['key']))


def check_checkpoint_across_device_counts():
  """A per-goal state saved from 4 devices (goal axis 4) restores onto 1 and onto 2 devices."""
  mesh4 = parallel.make_mesh(data=1, goal=4)
  state = {'params': jnp.arange(4 * 6, dtype=jnp.float32).reshape(4, 6), 'values': jnp.ones((4, 3)),
           'key': jax.random.split(jax.random.key(3), 4)}
  saved = parallel.put(state, mesh4, parallel.GOAL)
  with tempfile.TemporaryDirectory() as directory:
    with Checkpointer(directory, {'run': 1}) as checkpoints:
      checkpoints.save(1, saved)
    for mesh in (parallel.make_mesh(devices=jax.devices()[:1]), parallel.make_mesh(data=1, goal=2,
                                                                                   devices=jax.devices()[:2])):
      target = parallel.put(jax.tree.map(jnp.zeros_like, state), mesh, parallel.GOAL)
      with Checkpointer(directory, {'run': 1}) as checkpoints:
        restored = checkpoints.restore(target)
      for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert leaf.sharding == want.sharding, (leaf.sharding, want.sharding)
      np.testing.assert_array_equal(restored['params'], state['params'])
      np.testing.assert_array_equal(jax.random.key_data(restored['key']), jax.random.key_data(state['key']))


def check_validation():
  """Bad meshes and sizes the mesh does not divide fail with a message before anything compiles."""
  from rpl_jax import phases
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location('main_config', os.path.join(repo, 'experiments', 'configs', 'main.py'))
  main_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(main_config)
  for kwargs, message in ((dict(goal=3), 'goal axis of 3 does not divide the 4 devices'),
                          (dict(goal=2, data=3), 'goal=2 x data=3 needs 6 devices; there are 4')):
    with pytest.raises(ValueError, match=message):
      parallel.make_mesh(**kwargs)
  for overrides, message in (({'rrf.num_envs': 6}, r'rrf.num_envs=6 is not divisible by the 4 devices'),
                             ({'ril.batch_size': 30}, r'ril.batch_size=30 is not divisible by the 4 devices'),
                             ({'mesh.goal': 4, 'mesh.data': 1}, 'number of rrf.goals=3 is not divisible by the 4'),
                             ({'mesh.goal': 2, 'mesh.data': 4}, 'needs 8 devices; there are 4')):
    config = main_config.get_config()
    for path, value in overrides.items():
      section, key = path.split('.')
      config[section][key] = value
    with pytest.raises(ValueError, match=message):
      phases.build(config)


# --- the tests ------------------------------------------------------------------------------------


def run_check(name: str, *args: str, processes: int = 1, devices: int = DEVICES) -> None:
  """Runs check `name` in `processes` subprocesses of `devices` virtual devices each."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo,
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")
  commands = [[sys.executable, os.path.abspath(__file__), name, *([str(i)] if processes > 1 else []), *args]
              for i in range(processes)]
  running = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
             for c in commands]
  for process in running:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, f'{name} failed:\n{stdout}\n{stderr[-6000:]}'
    assert f'{name}: ok' in stdout


@pytest.mark.parametrize('name', ['check_ril_step', 'check_rrf_step', 'check_checkpoint_across_device_counts',
                                  'check_validation'])
def test_on_four_devices(name):
  run_check(name)


def test_one_device_mesh_and_errors():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == parallel.AXES and mesh.devices.shape == (1, jax.device_count())
  with pytest.raises(ValueError, match='needs 2 devices'):
    parallel.make_mesh(data=2, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match='goal >= 1'):
    parallel.make_mesh(goal=0)
  parallel.check_divisible(None, parallel.AXES, anything=7)  # no mesh: one device divides everything
  assert parallel.put({'x': 1}, None) == {'x': 1} and parallel.shard_batch({'x': 1}, None) == {'x': 1}


def test_distributed_flags_need_a_coordinator():
  with pytest.raises(ValueError, match='need a coordinator address'):
    parallel.initialize_distributed('', 2, 0)
  with pytest.raises(ValueError, match='0 <= process_id < num_processes'):
    parallel.initialize_distributed('localhost:1234', 2, 2)
  parallel.initialize_distributed('', 1, 0)  # one process: nothing to do


def test_two_processes(tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  run_check('check_two_processes', str(port), str(tmp_path / 'checkpoints'), processes=2, devices=DEVICES // 2)


if __name__ == '__main__':
  name, *args = sys.argv[1:]
  if name != 'check_two_processes':  # which starts jax.distributed before anything asks for devices
    assert jax.device_count() == DEVICES, f'expected {DEVICES} devices, have {jax.devices()}'
  globals()[name](*args)
  print(f'{name}: ok')
