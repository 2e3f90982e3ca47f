"""The nearest-neighbour baseline: the chosen demo against a brute-force search on a constructed
data set, and the open-loop replay against stepping the env by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from rpl_jax import nearest_neighbour
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import open_loop_rollout

GOAL = 'microwave-kettle-topknob-hinge'


def constructed_demos() -> PaddedDemos:
  """Five demos, their final states at their lengths: 0 reaches the goal only in its padding (after
  its end), 1 has three of the four goal elements, 2 all four but the microwave half-way, 3 the goal
  exactly but with unasked elements moved, 4 nothing."""
  lengths = np.array([4, 6, 5, 3, 6], np.int32)
  observations = np.repeat(np.asarray(tasks.INIT_QPOS, np.float32)[None, None], 5, axis=0).repeat(7, axis=1)
  goal = tasks.goal_state(GOAL).astype(np.float32)
  observations[0, 5:] = goal
  observations[1, 6] = tasks.goal_state('microwave-kettle-topknob')
  observations[2, 5] = goal
  observations[2, 5, list(tasks.ELEMENT_INDICES['microwave'])] *= 0.5
  observations[3, 3] = tasks.goal_state('microwave-kettle-topknob-hinge-slide-switch-bottomknob')
  rng = np.random.default_rng(0)
  return PaddedDemos(observations, rng.uniform(-1, 1, size=(5, 6, 9)).astype(np.float32), lengths)


def test_nearest_demo_against_brute_force():
  demos = constructed_demos()
  for goal_name in (GOAL, 'microwave-kettle-topknob-slide', 'bottomknob-switch'):
    goal = tasks.goal_state(goal_name).astype(np.float32)
    asked = [e for e in tasks.ELEMENTS if e in tasks.parse_elements(goal_name)]
    brute = [sum(np.linalg.norm(demos.observations[i, demos.lengths[i], list(tasks.ELEMENT_INDICES[e])]
                                - np.asarray(tasks.ELEMENT_GOALS[e])) for e in asked) for i in range(5)]
    np.testing.assert_allclose(nearest_neighbour.goal_distances(demos, goal), brute, rtol=1e-5, atol=1e-6)
    assert int(nearest_neighbour.nearest_demo(demos, goal)) == int(np.argmin(brute))
  assert int(nearest_neighbour.nearest_demo(demos, tasks.goal_state(GOAL).astype(np.float32))) == 3


def test_open_loop_replay_equals_stepping_by_hand_then_holds():
  env = KitchenEnv(KitchenConfig(backend='cpu', robot_noise_ratio=0.0, object_noise_ratio=0.0))
  demos, goal, key = constructed_demos(), jnp.asarray(tasks.goal_state(GOAL), jnp.float32), jax.random.key(4)
  trajectory = jax.jit(lambda k: open_loop_rollout(env, demos.actions[1], demos.lengths[1], k, goal, 9))(key)
  state = env.reset(jax.random.split(key)[0], goal)
  expected = [state.obs]
  for t in range(9):
    action = demos.actions[1, t] if t < demos.lengths[1] else np.zeros(9, np.float32)
    state = env.step(state, jnp.asarray(action))
    expected.append(state.obs)
  np.testing.assert_allclose(trajectory.observations, np.stack(expected), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(trajectory.actions[:6], demos.actions[1])
  np.testing.assert_array_equal(trajectory.actions[6:], 0.0)


def test_evaluator_replays_each_goals_nearest_demo():
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  evaluate = nearest_neighbour.make_evaluator(env, num_steps=8)
  result = evaluate(constructed_demos(), jax.random.key(0), (GOAL, 'bottomknob-switch'), episodes=2)
  assert result.step_completion.shape == (2, 2) and result.final_state.shape == (2, 2, tasks.NQ)
  assert np.all((result.step_completion >= 0) & (result.step_completion <= 4))
