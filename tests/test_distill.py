"""Distillation and per-goal evaluation: the collected samples are the teachers' own deterministic
rollouts, the student fits them, and a per-goal evaluation runs each goal's own parameters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv
from rpl_jax import distill, evaluation, networks, train
from rpl_jax.relabel import RelabelConfig
from rpl_jax.rollout import agent_rollout

GOALS = ('microwave-kettle-topknob-hinge', 'kettle-bottomknob-switch-slide')
BC = train.BCConfig(relabel=RelabelConfig(window_low=2, window_high=4, horizon=3),
                    policy=networks.PolicyConfig(hidden=(16,), last_layer_scale=1.0))
STEPS, EPISODES = 6, 2


@pytest.fixture(scope='module')
def setup():
  """Two teachers that differ in their low level, stacked per goal, with identity normalizers."""
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  agent = train.make_agent(BC)
  identity = lambda d: networks.identity_normalizer(d)
  normalizers = {'low': networks.PolicyNormalizer(identity(30), identity(30), identity(9)),
                 'high': networks.PolicyNormalizer(identity(30), identity(30), identity(30))}
  teachers = [{level: network.init(jax.random.key(10 * g + i)) for i, (level, network) in
               enumerate(agent.by_level.items())} for g in range(len(GOALS))]
  teachers[1]['high'] = teachers[0]['high']
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *teachers)
  return env, agent, normalizers, teachers, stacked


def test_collect_is_each_goals_own_deterministic_rollout(setup):
  env, agent, normalizers, teachers, stacked = setup
  goals = jnp.asarray(evaluation.goal_states(GOALS))
  collect = jax.jit(functools.partial(distill.collect, env, agent, episodes=EPISODES, num_steps=STEPS,
                                      levels=('low', 'high')))
  data = collect(stacked, normalizers, jax.random.key(0), goals)
  assert data['low'][0].shape == (len(GOALS) * EPISODES * STEPS, 30)
  assert data['high'][0].shape == (len(GOALS) * EPISODES * 2, 30)  # decisions at t = 0 and 3
  keys = jax.random.split(jax.random.key(0), (len(GOALS), EPISODES))
  by_goal = distill.split_by_goal(data, len(GOALS))
  for g in range(len(GOALS)):
    alone = agent_rollout(env, agent, teachers[g], normalizers, keys[g], jnp.broadcast_to(goals[g], (EPISODES, 30)),
                          STEPS, deterministic=True)
    np.testing.assert_allclose(by_goal['low'][2][g], alone.actions.reshape(-1, 9), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_goal['low'][1][g], alone.subgoals.reshape(-1, 30), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_goal['high'][1][g], np.broadcast_to(goals[g], (4, 30)))


def test_student_fits_the_teachers(setup):
  env, agent, normalizers, _, stacked = setup
  goals = jnp.asarray(evaluation.goal_states(GOALS))
  data = distill.collect(env, agent, stacked, normalizers, jax.random.key(1), goals, EPISODES, STEPS, ('low',))
  student = {level: network.init(jax.random.key(99)) for level, network in agent.by_level.items()}
  run = jax.jit(distill.make_distill(agent, distill.DistillConfig(updates=300, batch_size=24, learning_rate=3e-3)))
  fitted, metrics = run(student, normalizers, data, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(fitted['high']['log_std']), np.asarray(student['high']['log_std']))
  obs, subgoals, actions = data['low']
  error = lambda p: float(jnp.mean((agent.low.apply(p, normalizers['low'], obs, subgoals)[0] - actions)**2))
  assert error(fitted['low']) < 0.2 * error(student['low'])
  assert float(metrics['nll_low'][-20:].mean()) < float(metrics['nll_low'][:20].mean())


def test_per_goal_students_are_separate_fits_on_each_goals_samples(setup):
  env, agent, normalizers, _, stacked = setup
  goals = jnp.asarray(evaluation.goal_states(GOALS))
  data = distill.collect(env, agent, stacked, normalizers, jax.random.key(1), goals, EPISODES, STEPS, ('low',))
  student = {level: network.init(jax.random.key(99)) for level, network in agent.by_level.items()}
  fit = distill.make_distill(agent, distill.DistillConfig(updates=50, batch_size=8, learning_rate=3e-3))
  students, metrics = jax.jit(distill.per_goal_students(fit, len(GOALS)))(student, normalizers, data, jax.random.key(2))
  assert metrics['nll_low'].shape == (len(GOALS), 50)
  for g in range(len(GOALS)):
    own = jax.tree.map(lambda x: x[g * EPISODES * STEPS:(g + 1) * EPISODES * STEPS], data)
    alone, _ = jax.jit(fit)(student, normalizers, own, jax.random.key(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[g], b, rtol=1e-4, atol=1e-6), students, alone)
  assert not np.allclose(students['low']['mlp']['Dense_0']['kernel'][0], students['low']['mlp']['Dense_0']['kernel'][1])


def test_per_goal_evaluation_runs_each_goals_params(setup):
  env, agent, normalizers, teachers, stacked = setup
  evaluate = functools.partial(evaluation.make_evaluator(env, agent, STEPS), per_goal=True)
  key = jax.random.key(3)
  both = evaluate(stacked, normalizers, key, GOALS, EPISODES)
  for g in range(len(GOALS)):
    same = jax.tree.map(lambda *x: jnp.stack(x), teachers[g], teachers[g])
    alone = evaluate(same, normalizers, key, GOALS, EPISODES)
    np.testing.assert_array_equal(both.step_completion[g], alone.step_completion[g])
    np.testing.assert_allclose(both.final_state[g], alone.final_state[g], rtol=1e-5)
  assert not np.allclose(both.final_state[0], both.final_state[1], rtol=1e-3)  # the teachers differ
  shared = evaluation.make_evaluator(env, agent, STEPS)(teachers[0], normalizers, key, GOALS, EPISODES)
  same = evaluate(jax.tree.map(lambda *x: jnp.stack(x), teachers[0], teachers[0]), normalizers, key, GOALS, EPISODES)
  for field in ('step_completion', 'element_completion', 'final_state'):  # one batching for shared and per-goal
    np.testing.assert_array_equal(getattr(shared, field), getattr(same, field))
  with pytest.raises(ValueError, match='stacked'):
    evaluate(teachers[0], normalizers, key, GOALS, EPISODES)
