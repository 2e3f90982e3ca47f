"""One RRF iteration, per-goal vmapped: compile time, iteration time, env-steps/s, the share spent in
the rollout (the same rollout jitted alone), and the compile count over the iterations.

  python experiments/bench_rrf.py --goals=3 --num_envs=32 --iterations=10 --out=experiments/bench_rrf_cpu.json
  python experiments/bench_rrf.py --backend=mjx --goals=17 --num_envs=256   # an accelerator

The agent is RIL-shaped with fresh weights; the BC pools are synthetic demos (timing only).
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import ACTION_DIM, KitchenConfig, KitchenEnv, tasks
from rpl_jax import rrf, train
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import hierarchical_rollout

_BACKEND = flags.DEFINE_enum('backend', 'auto', ['auto', 'mjx', 'cpu'], 'Physics backend.')
_GOALS = flags.DEFINE_integer('goals', 3, 'Compound goals fine-tuned at once (the first of the 17).')
_NUM_ENVS = flags.DEFINE_integer('num_envs', 32, 'Episodes per goal per iteration.')
_STEPS = flags.DEFINE_integer('episode_steps', 280, 'Steps per episode.')
_ITERATIONS = flags.DEFINE_integer('iterations', 10, 'Timed iterations after the first (compiling) one.')
_VARIANT = flags.DEFINE_enum('variant', 'dapg', list(rrf.VARIANTS), 'RRF variant.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')


def main(argv):
  del argv
  env = KitchenEnv(KitchenConfig(backend=_BACKEND.value, horizon=_STEPS.value))
  bc = train.BCConfig()
  config = rrf.RRFConfig(variant=_VARIANT.value, num_envs=_NUM_ENVS.value, episode_steps=_STEPS.value,
                         buffer_episodes=max(256, _NUM_ENVS.value))
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
  step = rrf.jit_rrf_step(env, agent, config, per_goal=True)
  device_demos = train.device_demos(demos)

  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, goals, device_demos))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_ITERATIONS.value):
    state, metrics = step(state, goals, device_demos)
  jax.block_until_ready(metrics)
  iteration = (time.perf_counter() - start) / _ITERATIONS.value

  low, high = agent.policies(ril.params, ril.normalizers, deterministic=False)
  episode = lambda k, g: hierarchical_rollout(env, low, high, agent.horizon, _STEPS.value, k, g)
  rollout = jax.jit(jax.vmap(lambda k, g: jax.vmap(episode, in_axes=(0, None))(jax.random.split(k, _NUM_ENVS.value), g)))
  keys = jax.random.split(jax.random.key(2), len(goal_names))
  jax.block_until_ready(rollout(keys, goals))
  start = time.perf_counter()
  for _ in range(3):
    out = rollout(keys, goals)
  jax.block_until_ready(out)
  rollout_seconds = (time.perf_counter() - start) / 3

  env_steps = len(goal_names) * _NUM_ENVS.value * _STEPS.value
  result = {'backend': env.backend, 'device': str(jax.devices()[0]), 'variant': _VARIANT.value,
            'goals': len(goal_names), 'num_envs': _NUM_ENVS.value, 'episode_steps': _STEPS.value,
            'first_call_s': first, 'compile_s_estimate': first - iteration, 'iteration_s': iteration,
            'env_steps_per_iteration': env_steps, 'env_steps_per_s': env_steps / iteration,
            'rollout_s': rollout_seconds, 'rollout_share': rollout_seconds / iteration,
            'compiles': step._cache_size(), 'iterations_timed': _ITERATIONS.value}
  print(json.dumps(result, indent=1))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
