"""The env's pure reset/step on the C MuJoCo backend (fast to compile): shapes, semantics, bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import batched_env
from envs.kitchen import ACTION_DIM, KitchenConfig, env as env_module, model as kitchen_model, tasks

B = 3


def _reset(goal, backend='cpu', **overrides):
  env, reset, step = batched_env(backend, **overrides)
  return env, reset(jax.random.split(jax.random.key(0), B), goal), step


def test_shapes_under_jit_and_vmap(microwave_goal):
  env, state, step = _reset(microwave_goal)
  assert state.obs.shape == (B, tasks.NQ) and state.reward.shape == (B,) and state.done.shape == (B,)
  assert state.info['goal'].shape == (B, tasks.NQ) and state.info['goal_mask'].shape == (B, 7)
  state = step(state, jnp.zeros((B, ACTION_DIM)))
  assert state.obs.shape == (B, tasks.NQ) and state.data.qpos.shape == (B, tasks.NQ)
  assert set(state.metrics) == {'step_completion', 'success', 'nan_physics', 'nonfinite_actions'}
  assert env.observation_size == tasks.NQ


def test_observation_with_velocities(microwave_goal):
  env, state, step = _reset(microwave_goal, obs_velocities=True)
  assert env.observation_size == 59 and state.obs.shape == (B, 59)
  np.testing.assert_allclose(state.obs[:, :30], state.data.qpos)


def test_random_rollout_stays_finite_and_compiles_once(microwave_goal):
  _, state, step = _reset(microwave_goal)
  key = jax.random.key(1)
  for _ in range(30):
    key, sub = jax.random.split(key)
    state = step(state, jax.random.uniform(sub, (B, ACTION_DIM), minval=-1.0, maxval=1.0))
  assert np.isfinite(np.asarray(state.obs)).all()
  assert float(state.metrics['nan_physics'].sum()) == 0.0
  assert int(state.info['step'][0]) == 30
  assert step._cache_size() == 1


def test_action_to_position_target():
  env = batched_env('cpu')[0]
  franka = kitchen_model.franka_config()
  qpos = np.asarray(tasks.INIT_QPOS[:9], np.float32)
  action = np.array([-3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, -0.7], np.float32)
  expected = np.clip(qpos + 0.08 * 2.0 * np.clip(action, -1, 1), franka['pos_bound'][:9, 0], franka['pos_bound'][:9, 1])
  np.testing.assert_allclose(env.ctrl(jnp.asarray(qpos), jnp.asarray(action)), expected, rtol=1e-6)


def test_corrected_action_commands_the_same_target_from_a_displaced_state():
  env = batched_env('cpu')[0]
  qpos = jnp.asarray(tasks.INIT_QPOS[:9], jnp.float32).at[1].set(0.0)  # joint 2 off its limit
  action = jnp.array([-0.6, -0.5, -0.2, 0.0, 0.1, 0.3, 0.6, 0.2, -0.2], jnp.float32)
  displacement = jnp.array([0.03, -0.05, 0.02, 0.01, -0.04, 0.06, -0.02, 0.001, -0.001], jnp.float32)
  corrected = env_module.corrected_action(action, displacement)
  np.testing.assert_allclose(env.ctrl(qpos + displacement, corrected), env.ctrl(qpos, action), atol=1e-6)
  np.testing.assert_allclose(corrected, action - displacement / 0.16, rtol=1e-6)
  # Beyond the action's range it saturates: the target then falls short by the clipped remainder.
  far = env_module.corrected_action(jnp.ones(9), jnp.full(9, -0.2))
  np.testing.assert_array_equal(far, jnp.ones(9))


def test_per_env_noise_keys():
  env, reset, _ = batched_env('cpu', robot_noise_ratio=0.01)
  goal = jnp.asarray(tasks.goal_state('kettle'), jnp.float32)
  keys = jax.random.split(jax.random.key(3), B)
  obs = np.asarray(reset(keys, goal).obs)
  assert not np.allclose(obs[0, :9], obs[1, :9])
  np.testing.assert_array_equal(obs, np.asarray(reset(keys, goal).obs))
  assert np.abs(obs[:, :9] - tasks.INIT_QPOS[:9]).max() <= 0.01 * 0.1 + 1e-6  # ratio x amplitude 0.1


def test_reward_counts_first_completions_and_completion_is_sticky():
  goal = jnp.asarray(tasks.goal_state('microwave-kettle'), jnp.float32)
  _, state, step = _reset(goal)
  microwave = tasks.ELEMENT_INDICES['microwave'][0]
  at_goal = state.data.replace(qpos=state.data.qpos.at[0, microwave].set(-0.75))
  state = step(state.replace(data=at_goal), jnp.zeros((B, ACTION_DIM)))
  np.testing.assert_array_equal(state.reward, [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(state.metrics['step_completion'], [1.0, 0.0, 0.0])
  closed = state.data.replace(qpos=state.data.qpos.at[0, microwave].set(0.0))
  state = step(state.replace(data=closed), jnp.zeros((B, ACTION_DIM)))
  np.testing.assert_array_equal(state.reward, 0.0)
  np.testing.assert_array_equal(state.metrics['step_completion'], [1.0, 0.0, 0.0])
  assert not state.done.any() and not state.metrics['success'].any()


def test_success_ends_the_episode_and_horizon_truncates():
  goal = jnp.asarray(tasks.goal_state('microwave'), jnp.float32)
  _, state, step = _reset(goal, horizon=3)
  microwave = tasks.ELEMENT_INDICES['microwave'][0]
  state = state.replace(data=state.data.replace(qpos=state.data.qpos.at[1, microwave].set(-0.75)))
  state = step(state, jnp.zeros((B, ACTION_DIM)))
  np.testing.assert_array_equal(state.done, [False, True, False])
  np.testing.assert_array_equal(state.metrics['success'], [0.0, 1.0, 0.0])
  for _ in range(2):
    state = step(state, jnp.zeros((B, ACTION_DIM)))
  assert state.done.all()
  np.testing.assert_array_equal(state.info['truncated'], [True, False, True])


def test_nonfinite_actions_are_zeroed_and_counted(microwave_goal):
  _, state, step = _reset(microwave_goal)
  action = jnp.full((B, ACTION_DIM), 0.3, jnp.float32).at[0, :3].set(jnp.array([jnp.nan, jnp.inf, -jnp.inf]))
  sanitized = step(state, action)
  reference = step(state, action.at[0, :3].set(0.0))
  np.testing.assert_array_equal(sanitized.metrics['nonfinite_actions'], [3.0, 0.0, 0.0])
  np.testing.assert_array_equal(sanitized.obs, reference.obs)
  assert np.isfinite(np.asarray(sanitized.obs)).all()


def test_bad_input_errors(microwave_goal):
  env = batched_env('cpu')[0]
  state = env.reset(jax.random.key(0), microwave_goal)
  with pytest.raises(ValueError, match=r'action must have shape \(9,\)'):
    env.step(state, jnp.zeros(8))
  with pytest.raises(ValueError, match=r'action must have shape \(9,\)'):
    jax.jit(env.step)(state, jnp.zeros((2, 9)))
  with pytest.raises(TypeError, match='floating point'):
    env.step(state, jnp.zeros(9, jnp.int32))
  with pytest.raises(ValueError, match='30-d state'):
    env.reset(jax.random.key(0), jnp.zeros(7))
  with pytest.raises(ValueError, match='unknown backend'):
    KitchenConfig(backend='gpu')
  with pytest.raises(ValueError, match='horizon'):
    KitchenConfig(horizon=0)


def test_config_from_dict_inverts_asdict_through_json():
  """A dataset's metadata stores its env config as `dataclasses.asdict` through JSON; probes rebuild it."""
  config = KitchenConfig(backend='cpu', horizon=900, reset_noise_scale=0.005,
                         physics=kitchen_model.PhysicsConfig(timestep=0.008, substeps=10, iterations=6))
  stored = json.loads(json.dumps(dataclasses.asdict(config)))
  assert KitchenConfig.from_dict(stored) == config
  assert KitchenConfig.from_dict(stored, horizon=31) == dataclasses.replace(config, horizon=31)
  with pytest.raises(TypeError, match='unexpected keyword'):
    KitchenConfig.from_dict({**stored, 'frame_skip': 5})
