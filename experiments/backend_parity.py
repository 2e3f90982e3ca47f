"""MJX-JAX against C MuJoCo on identical action sequences: the parity tolerance of the two backends.

Both run the same noiseless env and model from the same reset for `--steps` control steps of smooth
sinusoidal actions (the arm sweeps; the objects stay where contact and settling put them). Prints
and writes the largest robot-joint and object-coordinate differences per step.
"""

import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import KitchenConfig, KitchenEnv, tasks

_ENVS = flags.DEFINE_integer('envs', 2, 'Parallel envs (each with its own phase of the sweep).')
_STEPS = flags.DEFINE_integer('steps', 50, 'Control steps.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')


def trajectory(backend: str, actions: jax.Array) -> np.ndarray:
  env = KitchenEnv(KitchenConfig(backend=backend, robot_noise_ratio=0.0, object_noise_ratio=0.0))
  goal = jnp.asarray(tasks.goal_state('microwave'), jnp.float32)
  state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), actions.shape[1]), goal)
  step = jax.vmap(env.step)

  def body(state, action):
    state = step(state, action)
    return state, state.data.qpos

  return np.asarray(jax.jit(lambda s, a: jax.lax.scan(body, s, a)[1])(state, actions))


def main(argv):
  del argv
  t = np.arange(_STEPS.value)[:, None, None]
  phases = np.arange(9) + np.arange(_ENVS.value)[None, :, None]
  actions = jnp.asarray(0.5 * np.sin(0.3 * t + phases), jnp.float32)
  c, m = trajectory('cpu', actions), trajectory('mjx', actions)
  diff = np.abs(c - m)
  robot, objects = diff[..., :tasks.ROBOT_DOF].max(axis=(1, 2)), diff[..., tasks.ROBOT_DOF:].max(axis=(1, 2))
  kettle = list(tasks.ELEMENT_INDICES['kettle'][:3])
  result = {'jax': jax.__version__, 'envs': _ENVS.value, 'steps': _STEPS.value,
            'robot_max': float(robot.max()), 'object_max': float(objects.max()),
            'kettle_drift_c': float(np.abs(c[-1][..., kettle] - tasks.INIT_QPOS[kettle]).max()),
            'kettle_drift_mjx': float(np.abs(m[-1][..., kettle] - tasks.INIT_QPOS[kettle]).max()),
            'robot_per_step': robot.tolist(), 'object_per_step': objects.tolist()}
  print(f"{_STEPS.value} steps x {_ENVS.value} envs: robot max {result['robot_max']:.2e} rad, objects max "
        f"{result['object_max']:.2e}; kettle position drift C {result['kettle_drift_c']:.2e}, "
        f"MJX {result['kettle_drift_mjx']:.2e}")
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
