"""One RRF iteration, per-goal vmapped: compile time, iteration time, env-steps/s, the rollout's time
(the same rollout jitted alone) and the rest of the iteration (relabeling, advantages, NPG, value
fit), the mean-action monitor's rollout alone (--monitor_episodes), and the XLA compilations during
the timed iterations (0: no recompiles). With --devices, a
weak-scaling run: the envs per goal grow with the devices of the mesh's data axis
(rpl_jax.parallel), --num_envs per device.

  python experiments/bench_rrf.py --goals=3 --num_envs=32 --iterations=10 --out=experiments/bench_rrf_cpu.json
  python experiments/bench_rrf.py --goals=3 --num_envs=32 --monitor_episodes=8   # the mean-action monitor's cost
  python experiments/bench_rrf.py --backend=mjx --goals=17 --num_envs=256   # an accelerator
  python experiments/bench_rrf.py --devices=1,2,4 --host_devices=4 --out=experiments/bench_scaling_cpu.json
  python experiments/bench_rrf.py --backend=mjx --devices=1,2,4,8 --num_envs=512   # an 8-GPU host

--host_devices splits a CPU host into virtual devices (XLA's --xla_force_host_platform_device_count).
The agent is RIL-shaped with fresh weights; the BC pools are synthetic demos (timing only).
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import ACTION_DIM, KitchenConfig, KitchenEnv, tasks
from rpl_jax import parallel, rrf, train
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import hierarchical_rollout

_BACKEND = flags.DEFINE_enum('backend', 'auto', ['auto', 'mjx', 'cpu'], 'Physics backend.')
_GOALS = flags.DEFINE_integer('goals', 3, 'Compound goals fine-tuned at once (the first of the 17).')
_NUM_ENVS = flags.DEFINE_integer('num_envs', 32, 'Episodes per goal per iteration (per device with --devices).')
_STEPS = flags.DEFINE_integer('episode_steps', 280, 'Steps per episode.')
_ITERATIONS = flags.DEFINE_integer('iterations', 10, 'Timed iterations after the first (compiling) one.')
_VARIANT = flags.DEFINE_enum('variant', 'dapg', list(rrf.VARIANTS), 'RRF variant.')
_MONITOR = flags.DEFINE_integer('monitor_episodes', 0, 'Mean-action monitor episodes per goal per iteration; '
                                'when > 0 their rollout is also timed alone.')
_DEVICES = flags.DEFINE_list('devices', [], 'Weak scaling: data-axis device counts to run (e.g. 1,2,4); empty: '
                             'one run without a mesh.')
_HOST_DEVICES = flags.DEFINE_integer('host_devices', 0, 'Virtual CPU devices to create (0: the host as one).')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')


_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_COMPILES = [0]  # XLA compilations so far (any function)
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kwargs: _COMPILES.__setitem__(0, _COMPILES[0] + (event == _COMPILE_EVENT)))


def measure(env, num_envs: int, mesh) -> dict:
  """Times the per-goal iteration and its rollout for `num_envs` envs per goal on `mesh` (or None)."""
  bc = train.BCConfig()
  config = rrf.RRFConfig(variant=_VARIANT.value, num_envs=num_envs, episode_steps=_STEPS.value,
                         buffer_episodes=max(256, num_envs), monitor_episodes=_MONITOR.value)
  rng = np.random.default_rng(0)
  steps = 300
  demos = PaddedDemos(np.asarray(tasks.INIT_QPOS, np.float32) + 0.01 * rng.normal(size=(8, steps + 1, tasks.NQ)).astype(
      np.float32), rng.uniform(-1, 1, size=(8, steps, ACTION_DIM)).astype(np.float32), np.full(8, steps, np.int32))
  agent = train.make_agent(bc)
  ril = train.init_state(agent, bc, demos, jax.random.key(0))
  goal_names = tasks.COMPOUND_GOALS[:_GOALS.value]
  goals = jnp.asarray(np.stack([tasks.goal_state(g) for g in goal_names]), jnp.float32)
  state = jax.vmap(lambda k: rrf.init_state(agent, config, ril.params, ril.normalizers, k))(
      jax.random.split(jax.random.key(1), len(goal_names)))
  state, goals = parallel.put((state, goals), mesh, parallel.GOAL)
  params, normalizers, device_demos = parallel.put((ril.params, ril.normalizers, train.device_demos(demos)), mesh)
  step = rrf.jit_rrf_step(env, agent, config, per_goal=True, mesh=mesh)

  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, goals, device_demos))
  first = time.perf_counter() - start
  compiles = _COMPILES[0]
  start = time.perf_counter()
  for _ in range(_ITERATIONS.value):
    state, metrics = step(state, goals, device_demos)
  jax.block_until_ready(metrics)
  iteration = (time.perf_counter() - start) / _ITERATIONS.value
  compiles = _COMPILES[0] - compiles

  low, high = agent.policies(params, normalizers, deterministic=False)
  episode = lambda k, g: hierarchical_rollout(env, low, high, agent.horizon, _STEPS.value, k, g)
  per_goal = lambda k, g: jax.vmap(episode, in_axes=(0, None))(parallel.shard_batch(jax.random.split(k, num_envs), mesh), g)
  goal_axis = None if mesh is None else parallel.GOAL
  rollout = jax.jit(jax.vmap(per_goal, spmd_axis_name=goal_axis))
  keys = parallel.put(jax.random.split(jax.random.key(2), len(goal_names)), mesh, parallel.GOAL)
  rollout_seconds = seconds_per_call(lambda: rollout(keys, goals))

  monitor_seconds = 0.0
  if _MONITOR.value:
    monitor = jax.jit(jax.vmap(lambda g: rrf.monitor_rollout(env, agent, params, normalizers, g, _MONITOR.value,
                                                              _STEPS.value, mesh), spmd_axis_name=goal_axis))
    monitor_seconds = seconds_per_call(lambda: monitor(goals))

  env_steps = len(goal_names) * num_envs * _STEPS.value
  return {'devices': parallel.devices_along(mesh, parallel.AXES), 'goals': len(goal_names), 'num_envs': num_envs,
          'monitor_episodes': _MONITOR.value, 'first_call_s': first, 'compile_s_estimate': first - iteration,
          'iteration_s': iteration, 'env_steps_per_iteration': env_steps, 'env_steps_per_s': env_steps / iteration,
          'rollout_s': rollout_seconds, 'rollout_share': rollout_seconds / iteration,
          'monitor_s': monitor_seconds, 'monitor_share': monitor_seconds / iteration,
          'update_s': iteration - rollout_seconds - monitor_seconds, 'compiles_in_timed_iterations': compiles}


def seconds_per_call(call, repeats: int = 3) -> float:
  """Mean wall time of `call()` over `repeats` calls after a first (compiling) one."""
  jax.block_until_ready(call())
  start = time.perf_counter()
  for _ in range(repeats):
    out = call()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def main(argv):
  del argv
  if _HOST_DEVICES.value:  # before JAX creates its CPU backend
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_HOST_DEVICES.value}"
  env = KitchenEnv(KitchenConfig(backend=_BACKEND.value, horizon=_STEPS.value))
  result = {'backend': env.backend, 'device': str(jax.devices()[0]), 'device_count': jax.device_count(),
            'cpu_cores': os.cpu_count(), 'variant': _VARIANT.value, 'episode_steps': _STEPS.value,
            'iterations_timed': _ITERATIONS.value}
  if not _DEVICES.value:
    result.update(measure(env, _NUM_ENVS.value, None))
  else:
    runs = []
    for n in map(int, _DEVICES.value):
      mesh = parallel.make_mesh(devices=jax.devices()[:n])
      runs.append(measure(env, _NUM_ENVS.value * n, mesh))
      print(json.dumps(runs[-1]), flush=True)
    result['weak_scaling'] = runs
    result['efficiency'] = [r['env_steps_per_s'] / (runs[0]['env_steps_per_s'] * r['devices'] / runs[0]['devices'])
                            for r in runs]
  print(json.dumps(result, indent=1))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
