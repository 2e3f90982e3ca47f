"""Distillation and per-goal evaluation: the collected samples are the teachers' own deterministic
rollouts, the student fits them, and a per-goal evaluation runs each goal's own parameters; a teacher's
labels on another agent's episodes, and DAgger's rounds."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv
from rpl_jax import distill, evaluation, networks, phases, rollout, train
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


def test_teacher_labels_are_the_teachers_means_at_every_step(setup):
  """An ensemble teacher's labels on another agent's episodes, against each member's own apply, step by step."""
  env, agent, normalizers, teachers, _ = setup
  goals = jnp.asarray(evaluation.goal_states(GOALS))
  actor = {level: network.init(jax.random.key(50 + i)) for i, (level, network) in enumerate(agent.by_level.items())}
  trajectory = distill.episodes_per_goal(env, agent, actor, normalizers, jax.random.key(4), goals, EPISODES, STEPS,
                                         per_goal=False)
  teacher = rollout.ensemble(agent, len(teachers))
  data = distill.teacher_labels(teacher, networks.stack_members(teachers), normalizers, trajectory, goals)
  i = 0
  for g in range(len(GOALS)):
    for e in range(EPISODES):
      for t in range(STEPS):
        obs, subgoal = trajectory.observations[g, e, t], trajectory.subgoals[g, e, t]
        mean = lambda level, conditioning: np.mean([agent.by_level[level].apply(p[level], normalizers[level], obs,
                                                                                 conditioning)[0] for p in teachers], 0)
        np.testing.assert_allclose(data['low'][0][i], obs)
        np.testing.assert_allclose(data['low'][1][i], subgoal)
        np.testing.assert_allclose(data['low'][2][i], mean('low', subgoal), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data['high'][1][i], goals[g])
        np.testing.assert_allclose(data['high'][2][i], mean('high', goals[g]), rtol=1e-5, atol=1e-6)
        i += 1
  assert i == data['low'][0].shape[0] == data['high'][0].shape[0]
  flat = train.make_agent(dataclasses.replace(BC, method='gcbc'))
  flat_teacher = rollout.ensemble(flat, 2)
  labels = distill.teacher_labels(flat_teacher, networks.stack_members([{'low': t['low']} for t in teachers]),
                                  normalizers, trajectory, goals)
  assert list(labels) == ['low']


def test_dagger_fits_on_the_teachers_episodes_then_adds_the_students_own(setup):
  env, agent, normalizers, teachers, _ = setup
  goals = jnp.asarray(evaluation.goal_states(GOALS))
  teacher, teacher_params = rollout.ensemble(agent, len(teachers)), networks.stack_members(teachers)
  start = {level: network.init(jax.random.key(77)) for level, network in agent.by_level.items()}
  config = distill.DistillConfig(episodes_per_goal=EPISODES, updates=200, batch_size=24, learning_rate=3e-3, decay=True)
  fitted, history = distill.dagger(env, teacher, teacher_params, agent, start, normalizers, goals, jax.random.key(5),
                                   config, 2, STEPS)
  samples = len(GOALS) * EPISODES * STEPS
  assert [h['episodes_of'] for h in history] == ['teacher', 'student', 'student']
  assert [h['samples'] for h in history] == [samples, 2 * samples, 3 * samples] and len(fitted) == 3
  # Fit 0 is make_distill on the teacher's labelled episodes, with dagger's keys.
  collect_key, fit_key = jax.random.split(jax.random.split(jax.random.key(5), 3)[0])
  own = distill.episodes_per_goal(env, teacher, teacher_params, normalizers, collect_key, goals, EPISODES, STEPS,
                                  per_goal=False)
  data = distill.teacher_labels(teacher, teacher_params, normalizers, own, goals)
  first, _ = jax.jit(distill.make_distill(agent, config))(start, normalizers, data, fit_key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fitted[0], first)
  # Each round's student is closer to the teacher on the student's own states than the start was.
  final = distill.episodes_per_goal(env, agent, fitted[-1], normalizers, jax.random.key(6), goals, EPISODES, STEPS,
                                    per_goal=False)
  labels = distill.teacher_labels(teacher, teacher_params, normalizers, final, goals)
  error = lambda p, level: float(jnp.mean((agent.by_level[level].apply(p[level], normalizers[level],
                                                                       *labels[level][:2])[0] - labels[level][2])**2))
  for level in ('low', 'high'):
    assert error(fitted[-1], level) < 0.2 * error(start, level), level
  with pytest.raises(ValueError, match='same levels'):
    distill.dagger(env, teacher, teacher_params, train.make_agent(dataclasses.replace(BC, method='gcbc')), start,
                   normalizers, goals, jax.random.key(5), config, 1, STEPS)
  with pytest.raises(ValueError, match='rounds must be >= 0'):
    distill.dagger(env, teacher, teacher_params, agent, start, normalizers, goals, jax.random.key(5), config, -1, STEPS)



def test_an_ensemble_of_runs_stacks_members_that_share_their_normalizers(setup):
  """phases.ensemble (evaluate.py --ensemble, distill_ensemble.py's teacher): the members' params stacked in
  their order under rollout.ensemble's agent; one member, or members fitted to other data, are refused."""
  _, agent, normalizers, teachers, _ = setup
  members = [phases.Policy(agent, params, normalizers, GOALS, {}) for params in teachers]
  joined = phases.ensemble(members)
  assert joined.agent == rollout.ensemble(agent, 2) and joined.normalizers is normalizers
  for member, params in enumerate(teachers):
    jax.tree.map(lambda stacked, own: np.testing.assert_array_equal(stacked[member], own), joined.params, params)
  with pytest.raises(ValueError, match='two or more members'):
    phases.ensemble(members[:1])
  low = normalizers['low']
  shifted = dict(normalizers, low=low.replace(obs=low.obs.replace(mean=low.obs.mean + 0.1)))
  with pytest.raises(ValueError, match='normalizers differ'):
    phases.ensemble([members[0], members[1]._replace(normalizers=shifted)])
