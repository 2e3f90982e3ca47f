"""RIL and GCBC: the compiled BC step, the hierarchical rollout and the evaluation tables."""

import dataclasses
import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax.flatten_util import ravel_pytree

from envs.kitchen import ACTION_DIM, KitchenConfig, KitchenEnv, tasks
from rpl_jax import evaluation, networks, phases, relabel, rollout, train
from rpl_jax.data import Demo, pad_demos

SMALL = networks.PolicyConfig(hidden=(32, 32))


def _demos(lengths=(40, 55, 70), seed=0):
  """Smooth synthetic trajectories whose actions are a fixed linear function of state and goal."""
  rng = np.random.default_rng(seed)
  demos = []
  for t in lengths:
    start, end = rng.normal(size=(2, tasks.NQ))
    obs = start + np.linspace(0, 1, t + 1)[:, None] * (end - start)
    actions = np.tanh(0.5 * (obs[1:, :ACTION_DIM] - obs[:-1, :ACTION_DIM]) * t)
    demos.append(Demo(obs.astype(np.float32), actions.astype(np.float32)))
  return pad_demos(demos)


def _config(method='ril', **kwargs):
  return train.BCConfig(method=method, relabel=relabel.RelabelConfig(5, 20, 4), policy=SMALL, batch_size=64,
                        **kwargs)


# --- training ---------------------------------------------------------------------------------------


def _dataset_log_likelihood(agent, state, demos, config):
  """Mean log-likelihood of every relabeled tuple (exact enumeration), per level: Eq. 1's two terms."""
  low = relabel.enumerate_low(demos, config.relabel.window_low)
  high = relabel.enumerate_high(demos, config.relabel.window_low, config.relabel.window_high)
  return {
      'low': float(jnp.mean(agent.low.log_prob(state.params['low'], state.normalizers['low'], low.observations,
                                               low.goals, low.actions))),
      'high': float(jnp.mean(agent.high.log_prob(state.params['high'], state.normalizers['high'],
                                                 high.observations, high.goals, high.subgoals)))}


@pytest.mark.parametrize('relative_subgoals', [False, True])
def test_ril_step_raises_both_terms_of_eq1_on_the_exact_relabeled_data(relative_subgoals):
  demos = _demos()
  config = _config(updates_per_step=25, learning_rate=3e-3, relative_subgoals=relative_subgoals)
  agent = train.make_agent(config)
  state = train.init_state(agent, config, demos, jax.random.key(0))
  before = _dataset_log_likelihood(agent, state, demos, config)
  step = train.jit_train_step(agent, config)
  device = train.device_demos(demos)
  for _ in range(8):
    state, metrics = step(state, device)
  after = _dataset_log_likelihood(agent, state, demos, config)
  assert int(state.updates) == 8 * 25
  assert after['low'] > before['low'] + 5 and after['high'] > before['high'] + 5, (before, after)
  assert set(metrics) == {'nll_low', 'nll_high', 'grad_norm'}
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_compiled_step_does_not_recompile_and_donates_the_state():
  demos = train.device_demos(_demos())
  config = _config(updates_per_step=3)
  agent = train.make_agent(config)
  state = train.init_state(agent, config, demos, jax.random.key(0))
  step = train.jit_train_step(agent, config)
  old = state
  for _ in range(4):
    state, _ = step(state, demos)
  assert step._cache_size() == 1
  assert old.params['low']['log_std'].is_deleted()  # donated to the first call


def test_average_is_the_moving_average_of_the_parameters_over_updates():
  demos = train.device_demos(_demos())
  ravel = lambda params: np.asarray(ravel_pytree(params)[0], np.float64)
  for decay in (0.0, 0.9):
    config = _config(updates_per_step=1, average_decay=decay)
    agent = train.make_agent(config)
    state = train.init_state(agent, config, demos, jax.random.key(0))
    step = train.jit_train_step(agent, config)
    expected = ravel(state.params)
    for _ in range(6):
      state, _ = step(state, demos)
      expected = decay * expected + (1 - decay) * ravel(state.params)
    np.testing.assert_allclose(ravel(state.average), expected, rtol=1e-5, atol=1e-6)
    if decay == 0:  # off: the agent acts with exactly the last parameters
      np.testing.assert_array_equal(ravel(state.average), ravel(state.params))
    else:  # the average lags the trained parameters
      assert not np.allclose(ravel(state.average), ravel(state.params))


def test_same_key_same_training_and_different_keys_differ():
  demos = train.device_demos(_demos())
  config = _config('gcbc', updates_per_step=4)
  agent = train.make_agent(config)
  step = train.jit_train_step(agent, config)

  def run(seed):
    state = train.init_state(agent, config, demos, jax.random.key(seed))
    for _ in range(2):
      state, _ = step(state, demos)
    return np.asarray(ravel_pytree(state.params)[0])

  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))


@pytest.mark.parametrize('method, levels', [('ril', {'low', 'high'}), ('gcbc', {'low'}), ('gcbc_final', {'low'}),
                                            ('oracle', {'low', 'high'})])
def test_methods_train_their_levels(method, levels):
  demos = _demos()
  config = _config(method, updates_per_step=2)
  agent = train.make_agent(config)
  assert set(agent.levels) == levels
  state = train.init_state(agent, config, demos, jax.random.key(0))
  boundaries = np.array([[10, 20, 30, 40], [5, 25, 45, 55], [30, 40, 50, 60]], np.int32)  # oracle only
  new, metrics = train.jit_train_step(agent, config)(state, train.training_data(method, demos, boundaries))
  assert set(metrics) == {f'nll_{level}' for level in levels} | {'grad_norm'}
  assert int(new.updates) == 2 and all(np.isfinite(float(v)) for v in metrics.values())


def test_normalizers_ignore_padding():
  demos = _demos(lengths=(5, 30))
  agent = train.make_agent(_config())
  normalizers = train.fit_normalizers(agent, _config(), demos)
  valid = np.concatenate([demos.observations[0, :6], demos.observations[1, :31]])
  np.testing.assert_allclose(normalizers['low'].obs.mean, valid.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(normalizers['high'].output.std, np.maximum(valid.std(axis=0), 1e-2), rtol=1e-4)
  np.testing.assert_array_equal(normalizers['low'].output.std, np.ones(ACTION_DIM))


@pytest.mark.parametrize('form', ['relative_goals', 'relative_subgoals'])
def test_relative_normalizers_fit_the_relabeled_offsets(form):
  """With relative goals, each level's goal normalizer is fitted to goal - state over its relabeled
  tuples; with relative subgoals, the high level's output normalizer to subgoal - state (Algorithm 3's
  s_{t+min(w, W_l)} - s_t). Against the exact enumeration, within the sampling error of
  NORMALIZER_SAMPLES draws; everything else stays the absolute form's."""
  demos = _demos()
  config = _config(**{form: True})
  normalizers = train.fit_normalizers(train.make_agent(config), config, demos)
  absolute = train.fit_normalizers(train.make_agent(config), _config(), demos)
  windows = config.relabel
  exact = {'low': relabel.enumerate_low(demos, windows.window_low),
           'high': relabel.enumerate_high(demos, windows.window_low, windows.window_high)}
  if form == 'relative_goals':
    fitted = {level: (normalizers[level].goal, batch.observations, batch.goals) for level, batch in exact.items()}
  else:
    fitted = {'high': (normalizers['high'].output, exact['high'].observations, exact['high'].subgoals)}
    np.testing.assert_array_equal(normalizers['high'].goal.mean, absolute['high'].goal.mean)
  for normalizer, states, targets in fitted.values():
    offsets = np.asarray(targets) - np.asarray(states)
    tolerance = 5 * offsets.std(0) / np.sqrt(train.NORMALIZER_SAMPLES)
    np.testing.assert_array_less(np.abs(normalizer.mean - offsets.mean(0)), tolerance + 1e-6)
    np.testing.assert_allclose(normalizer.std, np.maximum(offsets.std(0), 1e-2), rtol=0.05)
  assert [normalizers[level].relative_goal for level in exact] == [form == 'relative_goals'] * 2
  assert [normalizers[level].relative_output for level in exact] == [False, form == 'relative_subgoals']
  # The observation normalizer is still the states' (unchanged by the goal representation).
  np.testing.assert_array_equal(normalizers['low'].obs.mean, absolute['low'].obs.mean)
  assert not absolute['low'].relative_goal and not absolute['high'].relative_output


@pytest.mark.parametrize('method, ignoring', [('ril', 'high'), ('oracle', 'high'), ('gcbc', 'low')])
def test_object_goals_hide_the_robot_joints_from_the_task_goal_level_only(method, ignoring):
  """RIL's low level must still see its subgoal's arm posture; the level that takes the task's goal
  does not see the goal's 9 robot joints."""
  demos = _demos()
  config = _config(method, object_goals=True)
  normalizers = train.fit_normalizers(train.make_agent(config), config, demos)
  assert {level: n.ignored_goal_dims for level, n in normalizers.items()} == {
      level: tasks.ROBOT_DOF if level == ignoring else 0 for level in normalizers}
  whole = train.fit_normalizers(train.make_agent(config), _config(method), demos)
  assert all(n.ignored_goal_dims == 0 for n in whole.values())


def test_config_round_trips_through_its_saved_dict(tmp_path):
  """experiments/train_ril.py saves dataclasses.asdict(config) (through JSON); config_from_dict inverts
  it, a field saved before it existed takes its default, and load_table_run names what is missing."""
  config = _config('gcbc', object_goals=True, corrective_noise=0.05, average_decay=0.9)
  saved = json.loads(json.dumps(dataclasses.asdict(config)))
  assert train.config_from_dict(saved) == config
  del saved['object_goals']
  assert train.config_from_dict(saved) == dataclasses.replace(config, object_goals=False)
  with pytest.raises(FileNotFoundError, match='results.json is missing'):
    phases.load_table_run(str(tmp_path), 'ril', 0)
  (tmp_path / 'results.json').write_text(json.dumps({'configs': {'gcbc': saved}}))
  with pytest.raises(ValueError, match="no 'ril' runs; it has \\['gcbc'\\]"):
    phases.load_table_run(str(tmp_path), 'ril', 0)


def test_bad_configs_fail_before_compiling():
  with pytest.raises(ValueError, match='unknown method'):
    train.BCConfig(method='bc')
  with pytest.raises(ValueError, match="relative_subgoals is for a high level; method 'gcbc'"):
    train.BCConfig(method='gcbc', relative_subgoals=True)
  with pytest.raises(ValueError, match='batch_size'):
    train.BCConfig(batch_size=0)
  for decay in (-0.1, 1.0, float('nan')):
    with pytest.raises(ValueError, match='average_decay'):
      train.BCConfig(average_decay=decay)
  for noise in (-0.1, float('nan'), float('inf')):
    for name in ('corrective_noise', 'subgoal_noise', 'subgoal_finger_noise'):
      with pytest.raises(ValueError, match=name):
        train.BCConfig(**{name: noise})
  config = train.BCConfig(relabel=relabel.RelabelConfig(30, 260, 30), policy=SMALL)
  with pytest.raises(ValueError):
    train.init_state(train.make_agent(config), config, _demos(lengths=(40, 50)), jax.random.key(0))


def test_corrective_noise_displaces_half_the_tuples_and_keeps_their_servo_targets():
  draw = train.samplers('gcbc', relabel.RelabelConfig(5, 20, 4), 4096)['low'].draw
  demos, key, noise = train.device_demos(_demos()), jax.random.key(3), 0.05
  states, goals, actions = (np.asarray(x) for x in train.corrected(draw, noise)(key, demos))
  plain_states, plain_goals, plain_actions = (np.asarray(x) for x in draw(jax.random.split(key, 3)[0], demos))
  robot = slice(0, tasks.ROBOT_DOF)
  np.testing.assert_array_equal(goals, plain_goals)
  np.testing.assert_array_equal(states[:, robot.stop:], plain_states[:, robot.stop:])
  displacement = states[:, robot] - plain_states[:, robot]
  moved = np.any(displacement != 0, axis=1)
  assert abs(moved.mean() - 0.5) < 0.03  # 4096 Bernoulli(1/2) draws: 4 standard deviations
  np.testing.assert_allclose(displacement[moved].std(), noise, rtol=0.03)
  np.testing.assert_array_equal(actions[~moved], plain_actions[~moved])
  # The same position target (observed joints + 2 * 80 ms * action) wherever the label did not saturate.
  free = moved[:, None] & (np.abs(actions) < 1)
  targets, plain_targets = states[:, robot] + 0.16 * actions, plain_states[:, robot] + 0.16 * plain_actions
  assert free.mean() > 0.4
  np.testing.assert_allclose(targets[free], plain_targets[free], atol=1e-5)
  assert np.all(np.abs(actions) <= 1)


def test_subgoal_noise_moves_only_the_goals_robot_joints():
  draw = train.samplers('ril', relabel.RelabelConfig(5, 20, 4), 4096)['low'].draw
  demos, key, noise, finger_noise = train.device_demos(_demos()), jax.random.key(5), 0.3, 0.02
  states, goals, actions = (np.asarray(x) for x in train.noisy_goals(draw, noise, finger_noise)(key, demos))
  plain_states, plain_goals, plain_actions = (np.asarray(x) for x in draw(jax.random.split(key)[0], demos))
  np.testing.assert_array_equal(states, plain_states)
  np.testing.assert_array_equal(actions, plain_actions)
  np.testing.assert_array_equal(goals[:, tasks.ROBOT_DOF:], plain_goals[:, tasks.ROBOT_DOF:])
  offsets = goals[:, :tasks.ROBOT_DOF] - plain_goals[:, :tasks.ROBOT_DOF]
  # 4096 standard normals per joint, scaled by 0.3 rad (arm) and 0.02 m (fingers): each joint's mean
  # and std within 4 standard errors, the 9 joints uncorrelated.
  scale = np.array([noise] * tasks.ARM_DOF + [finger_noise] * (tasks.ROBOT_DOF - tasks.ARM_DOF))
  rows = offsets.shape[0]
  assert np.all(np.abs(offsets.mean(0)) < 4 * scale / np.sqrt(rows))
  np.testing.assert_allclose(offsets.std(0), scale, rtol=4 / np.sqrt(2 * rows))
  assert np.abs(np.corrcoef(offsets.T) - np.eye(tasks.ROBOT_DOF)).max() < 0.07


def test_training_with_either_noise_still_fits_the_demos():
  demos = _demos()
  trained = {}
  noises = {'clean': {}, 'corrective': {'corrective_noise': 0.01}, 'subgoal': {'subgoal_noise': 0.05},
            'finger': {'subgoal_finger_noise': 0.01}}
  for name, noise in noises.items():
    config = _config(updates_per_step=25, learning_rate=3e-3, **noise)
    agent = train.make_agent(config)
    state = train.init_state(agent, config, demos, jax.random.key(0))
    before = _dataset_log_likelihood(agent, state, demos, config)
    step = train.jit_train_step(agent, config)
    for _ in range(8):
      state, _ = step(state, train.device_demos(demos))
    after = _dataset_log_likelihood(agent, state, demos, config)
    assert after['low'] > before['low'] + 5 and after['high'] > before['high'] + 5, (name, before, after)
    trained[name] = state.params
  for name in ('corrective', 'subgoal', 'finger'):  # the noise is wired in: the low level trains differently
    assert not np.allclose(trained['clean']['low']['log_std'], trained[name]['low']['log_std']), name


# --- hierarchical rollout -------------------------------------------------------------------------


@struct.dataclass
class _State:
  obs: jax.Array
  reward: jax.Array
  info: dict
  metrics: dict


class _LineEnv:
  """A stand-in env with the kitchen's interface: the state moves by the action's first 9 entries."""

  def reset(self, key, goal):
    obs = jax.random.normal(key, (tasks.NQ,))
    return _State(obs, jnp.zeros(()), {'completed': jnp.zeros(7, bool)}, _no_metrics())

  def step(self, state, action):
    obs = state.obs.at[:ACTION_DIM].add(0.1 * action)
    return _State(obs, jnp.zeros(()), state.info, _no_metrics())


def _no_metrics():
  return {'step_completion': jnp.zeros(()), 'success': jnp.zeros(()), 'nan_physics': jnp.zeros(())}


@pytest.mark.parametrize('horizon', [1, 4, 7])
def test_subgoal_changes_exactly_every_h_steps(horizon):
  high = lambda obs, goal, key: jax.random.normal(key, (tasks.NQ,))  # a fresh subgoal at every decision
  low = lambda obs, subgoal, key: jnp.tanh(subgoal[:ACTION_DIM] - obs[:ACTION_DIM])
  run = jax.jit(lambda key: rollout.hierarchical_rollout(_LineEnv(), low, high, horizon, 20, key, jnp.zeros(tasks.NQ)))
  subgoals = np.asarray(run(jax.random.key(0)).subgoals)
  changed = np.any(subgoals[1:] != subgoals[:-1], axis=-1)
  np.testing.assert_array_equal(changed, np.arange(1, 20) % horizon == 0)


def test_flat_rollout_acts_on_the_goal():
  goal = jnp.arange(tasks.NQ, dtype=jnp.float32)
  low = lambda obs, subgoal, key: jnp.zeros(ACTION_DIM)
  trajectory = rollout.hierarchical_rollout(_LineEnv(), low, None, 5, 6, jax.random.key(0), goal)
  np.testing.assert_array_equal(np.asarray(trajectory.subgoals), np.tile(np.asarray(goal), (6, 1)))
  assert trajectory.observations.shape == (7, tasks.NQ) and trajectory.actions.shape == (6, ACTION_DIM)


@pytest.fixture(scope='module')
def kitchen():
  return KitchenEnv(KitchenConfig(backend='cpu', horizon=12))


def test_agent_rollout_on_the_kitchen_same_key_same_episode(kitchen):
  config = _config()
  agent = train.make_agent(config)
  state = train.init_state(agent, config, _demos(), jax.random.key(0))
  goals = jnp.asarray(evaluation.goal_states(['microwave-kettle-topknob-hinge'] * 2))
  run = jax.jit(functools.partial(rollout.agent_rollout, kitchen, agent, num_steps=12, deterministic=False))
  keys = jax.random.split(jax.random.key(3), 2)
  first, again = run(state.params, state.normalizers, keys, goals), run(state.params, state.normalizers, keys, goals)
  np.testing.assert_array_equal(np.asarray(first.actions), np.asarray(again.actions))
  assert not np.allclose(first.actions[0], first.actions[1])  # each env has its own key
  assert first.observations.shape == (2, 13, tasks.NQ) and np.isfinite(np.asarray(first.actions)).all()
  changed = np.any(np.asarray(first.subgoals[:, 1:] != first.subgoals[:, :-1]), axis=-1)
  np.testing.assert_array_equal(changed, np.tile(np.arange(1, 12) % config.relabel.horizon == 0, (2, 1)))


# --- evaluation -----------------------------------------------------------------------------------


def test_evaluation_runs_every_goal_and_episode(kitchen):
  config = _config('gcbc')
  agent = train.make_agent(config)
  state = train.init_state(agent, config, _demos(), jax.random.key(0))
  evaluate = evaluation.make_evaluator(kitchen, agent, num_steps=12)
  goals = ['kettle-bottomknob-hinge-slide', 'microwave-kettle-topknob-switch']
  result = evaluate(state.params, state.normalizers, jax.random.key(0), goals, episodes=3)
  assert result.step_completion.shape == (2, 3) and result.element_completion.shape == (2, 3, 7)
  # Only elements of the goal can count as complete.
  for g, goal in enumerate(goals):
    assert not result.element_completion[g][:, ~tasks.element_mask(goal)].any()
  np.testing.assert_array_equal(result.step_completion, result.element_completion.sum(-1))
  with pytest.raises(ValueError, match='unknown kitchen element'):
    evaluate(state.params, state.normalizers, jax.random.key(0), ['kettle-toaster'], episodes=1)


def test_goal_values_from_the_demos_ignore_padding_and_reach_the_agent(kitchen):
  """Demo 0 ends (one real completed state) at microwave -0.5 and is padded with that state; demo 1
  holds -0.7 for three states. The real completed states' median is -0.7; with the padding it would be -0.5."""
  states = np.repeat(tasks.INIT_QPOS[None].astype(np.float32), 11, axis=0)
  short, long = states[:3].copy(), states.copy()
  short[2, 22] = -0.5
  long[8:, 22] = -0.7
  demos = pad_demos([Demo(short, np.zeros((2, ACTION_DIM), np.float32)),
                     Demo(long, np.zeros((10, ACTION_DIM), np.float32))])
  values = evaluation.goal_values('demos', demos)
  assert values['microwave'] == pytest.approx((-0.7,)) and values['kettle'] == tasks.ELEMENT_GOALS['kettle']
  assert evaluation.goal_values('task') == tasks.ELEMENT_GOALS
  for bad in (('human', demos), ('demos', None)):
    with pytest.raises(ValueError, match='goal values come from'):
      evaluation.goal_values(*bad)
  np.testing.assert_allclose(evaluation.goal_states(['microwave-kettle'], values)[0, 22], -0.7)

  config = _config('gcbc')
  agent = train.make_agent(config)
  state = train.init_state(agent, config, _demos(), jax.random.key(0))
  finals = [evaluation.make_evaluator(kitchen, agent, num_steps=6, values=v)(
      state.params, state.normalizers, jax.random.key(0), ['microwave-kettle-topknob-hinge'], episodes=1).final_state
      for v in (None, values)]
  assert not np.array_equal(*finals), 'the goal values must reach the policy'


def test_summarize_matches_hand_counts():
  goals = ('kettle-bottomknob-hinge-slide', 'microwave-kettle-topknob-switch')
  completion = np.zeros((2, 2, 7), bool)
  index = {e: i for i, e in enumerate(tasks.ELEMENTS)}
  completion[0, 0, [index['kettle'], index['bottom burner'], index['hinge cabinet'], index['slide cabinet']]] = True
  completion[0, 1, index['kettle']] = True
  completion[1, 1, [index['microwave'], index['kettle']]] = True
  result = evaluation.Evaluation(goals, completion.sum(-1), completion.sum(-1) == 4, completion, np.zeros((2, 2)),
                                  np.zeros((2, 2, 30)))
  summary = evaluation.summarize(result)
  assert summary['success'] == 0.25 and summary['step_completion'] == (4 + 1 + 0 + 2) / 4
  assert summary['per_goal'][goals[0]] == {'success': 0.5, 'step_completion': 2.5}
  assert summary['per_element']['kettle'] == 0.75  # 3 of the 4 episodes, all of whose goals have the kettle
  assert summary['per_element']['microwave'] == 0.5 and summary['per_element']['light switch'] == 0.0
  assert 'top burner' in summary['per_element'] and summary['episodes'] == 4


def test_success_lead_p_value_equals_enumerating_every_split_of_the_episodes():
  # Under equal success rates every way of dealing the pooled episodes into the two agents is equally
  # likely; the p-value is the share of deals giving the first agent at least its successes.
  for successes, episodes, other_successes, other_episodes in [(3, 5, 1, 4), (0, 4, 2, 3), (4, 4, 0, 5), (2, 6, 2, 6)]:
    pooled = [1] * (successes + other_successes) + [0] * (episodes + other_episodes - successes - other_successes)
    deals = list(itertools.combinations(range(len(pooled)), episodes))
    expected = sum(sum(pooled[i] for i in deal) >= successes for deal in deals) / len(deals)
    assert evaluation.success_lead_p_value(successes, episodes, other_successes, other_episodes) == \
        pytest.approx(expected, rel=1e-12)
  # Large counts stay exact: 8 of 510 against 0 of 510 is C(510, 8) / C(1020, 8), about 2^-8.
  assert evaluation.success_lead_p_value(8, 510, 0, 510) == pytest.approx(
      math.comb(510, 8) / math.comb(1020, 8), rel=1e-12)
  assert evaluation.success_lead_p_value(0, 510, 0, 510) == 1.0
  for bad in [(3, 2, 0, 5), (-1, 5, 0, 5), (1.5, 5, 0, 5)]:
    with pytest.raises(ValueError, match='counts'):
      evaluation.success_lead_p_value(*bad)


def test_success_lead_counts_the_episodes_behind_both_rates():
  summary = lambda successes, episodes: {'success': successes / episodes, 'episodes': episodes}
  lead = evaluation.success_lead(summary(7, 30), summary(2, 17))
  assert lead == {'successes': 7, 'episodes': 30, 'reference_successes': 2, 'reference_episodes': 17,
                  'p': evaluation.success_lead_p_value(7, 30, 2, 17)}
  text = evaluation.leads_markdown({'DAPG': lead}, 'RIL')
  assert '## Success lead over RIL' in text and f"- DAPG: 7 of 30 against 2 of 17, p = {lead['p']:.2g}\n" in text
