"""The main job. For now a short demo of the batched kitchen: reset N envs on a compound goal, step
them with random actions, and print throughput and the element states.

  python experiments/main.py --num_envs=64 --steps=50 --goal=microwave-kettle-topknob-hinge
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import ACTION_DIM, KitchenConfig, KitchenEnv, tasks

_NUM_ENVS = flags.DEFINE_integer('num_envs', 64, 'Parallel envs.')
_STEPS = flags.DEFINE_integer('steps', 50, 'Control steps (80 ms each).')
_BACKEND = flags.DEFINE_enum('backend', 'auto', ['auto', 'mjx', 'cpu'], 'Physics backend.')
_GOAL = flags.DEFINE_string('goal', 'microwave-kettle-topknob-hinge', 'Compound goal, elements joined by "-".')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')


def main(argv):
  del argv
  if _NUM_ENVS.value < 1 or _STEPS.value < 1:
    raise app.UsageError('--num_envs and --steps must be positive.')
  goal = jnp.asarray(tasks.goal_state(_GOAL.value), jnp.float32)
  env = KitchenEnv(KitchenConfig(backend=_BACKEND.value))
  print(f'kitchen: {env.backend} backend on {jax.devices()[0]}, {_NUM_ENVS.value} envs, goal {_GOAL.value}')
  reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
  step = jax.jit(jax.vmap(env.step))
  key, reset_key = jax.random.split(jax.random.key(_SEED.value))
  state = reset(jax.random.split(reset_key, _NUM_ENVS.value), goal)

  def random_actions(key):
    return jax.random.uniform(key, (_NUM_ENVS.value, ACTION_DIM), minval=-1.0, maxval=1.0)

  start = time.perf_counter()
  state = jax.block_until_ready(step(state, random_actions(key)))
  print(f'compile + first step: {time.perf_counter() - start:.1f} s')
  start = time.perf_counter()
  for _ in range(_STEPS.value - 1):
    key, sub = jax.random.split(key)
    state = step(state, random_actions(sub))
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  env_steps = _NUM_ENVS.value * (_STEPS.value - 1) / max(seconds, 1e-9)
  print(f'throughput: {env_steps:.0f} env-steps/s, {env_steps * env.config.physics.substeps:.0f} physics-steps/s')

  distances = np.asarray(tasks.element_distances(state.data.qpos))
  completed = np.asarray(tasks.element_completion(state.data.qpos))
  print(f"\n{'element':<14} {'mean distance to goal':>22} {'complete':>9}")
  for i, element in enumerate(tasks.ELEMENTS):
    print(f'{element:<14} {distances[:, i].mean():>22.3f} {completed[:, i].mean():>8.0%}')
  print(f"\nstep completion {float(state.metrics['step_completion'].mean()):.2f} / 4, "
        f"success {float(state.metrics['success'].mean()):.0%}, "
        f"nan physics {int(state.metrics['nan_physics'].sum())}, done {int(state.done.sum())}")


if __name__ == '__main__':
  app.run(main)
