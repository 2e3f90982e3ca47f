"""Both physics backends behind one API: MJX-JAX against C MuJoCo, and NaN isolation on each.

The MJX step takes about a minute to compile on 2 CPU cores; it is compiled once for this module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import batched_env
from envs.kitchen import ACTION_DIM

B = 3
STEPS = 8
# MJX-JAX (float32) against C MuJoCo (float64) on the same model and actions, over STEPS control steps;
# measured maxima and how they were measured are in BUILD_NOTES.md ("Backend parity").
ROBOT_TOLERANCE = 1e-4
OBJECT_TOLERANCE = 5e-3


def _trajectory(backend, goal, actions):
  _, reset, step = batched_env(backend)
  state = reset(jax.random.split(jax.random.key(0), B), goal)
  qpos = []
  for action in actions:
    state = step(state, action)
    qpos.append(np.asarray(state.data.qpos))
  return np.stack(qpos)


def test_mjx_matches_c_mujoco(microwave_goal):
  # Smooth actions: a slow sweep that keeps the arm inside its limits.
  t = np.arange(STEPS)[:, None, None]
  actions = jnp.asarray(0.5 * np.sin(0.3 * t + np.arange(ACTION_DIM) + np.arange(B)[None, :, None]), jnp.float32)
  c_qpos = _trajectory('cpu', microwave_goal, actions)
  mjx_qpos = _trajectory('mjx', microwave_goal, actions)
  robot_error = np.abs(c_qpos[..., :9] - mjx_qpos[..., :9]).max()
  object_error = np.abs(c_qpos[..., 9:] - mjx_qpos[..., 9:]).max()
  assert np.abs(c_qpos[-1, :, :9] - c_qpos[0, :, :9]).max() > 0.1, 'the arm must actually move'
  assert robot_error < ROBOT_TOLERANCE, robot_error
  assert object_error < OBJECT_TOLERANCE, object_error


@pytest.mark.parametrize('backend', ['cpu', 'mjx'])
@pytest.mark.parametrize('poison', [np.nan, 1e12], ids=['nan', 'huge'])
def test_bad_physics_ends_only_that_env(backend, poison, microwave_goal):
  _, reset, step = batched_env(backend)
  state = reset(jax.random.split(jax.random.key(0), B), microwave_goal)
  action = jnp.full((B, ACTION_DIM), 0.2, jnp.float32)  # not weak-typed: same jit cache entry as above
  clean = step(state, action)
  poisoned = state.replace(data=state.data.replace(qvel=state.data.qvel.at[1].set(poison)))
  out = step(poisoned, action)
  np.testing.assert_array_equal(out.done, [False, True, False])
  np.testing.assert_array_equal(out.metrics['nan_physics'], [0.0, 1.0, 0.0])
  np.testing.assert_array_equal(out.reward[1], 0.0)
  for i in (0, 2):
    np.testing.assert_array_equal(out.obs[i], clean.obs[i])
  # The failed env keeps its pre-step state rather than a diverged one.
  np.testing.assert_array_equal(out.data.qpos[1], poisoned.data.qpos[1])
