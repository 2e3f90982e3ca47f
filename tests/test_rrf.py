"""RRF: the DAPG schedule, the IRIL ring buffer, rewards and level samples against direct
references, and the compiled iteration (every variant, compiled once, frozen high level untouched,
determinism per key, the per-goal vmap against separate per-goal steps, the BC term's pull toward
the demos), on the C MuJoCo backend at a tiny size."""

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from rpl_jax import networks, relabel, rollout, rrf, train
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.relabel import RelabelConfig
from rpl_jax.rollout import Trajectory

WINDOWS = RelabelConfig(window_low=2, window_high=4, horizon=3)
GOALS = ('microwave-kettle-topknob-hinge', 'kettle-bottomknob-switch-slide')


def rrf_config(**overrides) -> rrf.RRFConfig:
  defaults = dict(num_envs=2, episode_steps=7, relabel=WINDOWS, value_hidden=(8,), value_batch_size=4,
                  bc_batch_size=8, buffer_episodes=5)
  return rrf.RRFConfig(**{**defaults, **overrides})


@pytest.fixture(scope='module')
def env():
  return KitchenEnv(KitchenConfig(backend='cpu'))


def synthetic_demos() -> PaddedDemos:
  """Three short demos near the reset state, with random actions."""
  rng = np.random.default_rng(0)
  observations = np.asarray(tasks.INIT_QPOS, np.float32) + 0.05 * rng.normal(size=(3, 9, tasks.NQ)).astype(np.float32)
  return PaddedDemos(observations, rng.uniform(-1, 1, size=(3, 8, 9)).astype(np.float32), np.array([8, 6, 5], np.int32))


def pretrained(method: str = 'ril'):
  """(agent, BCState) of `method` with random weights and normalizers fitted to synthetic_demos()."""
  bc = train.BCConfig(method=method, relabel=WINDOWS, policy=networks.PolicyConfig(hidden=(8,)))
  agent = train.make_agent(bc)
  return agent, train.init_state(agent, bc, synthetic_demos(), jax.random.key(0))


@pytest.fixture(scope='module')
def setup():
  """A RIL agent with random weights and normalizers fitted to small synthetic demos."""
  agent, state = pretrained()
  return agent, state.params, state.normalizers, train.device_demos(synthetic_demos())


@functools.lru_cache(maxsize=None)
def compiled(env, agent, config, per_goal=False):
  return rrf.jit_rrf_step(env, agent, config, per_goal)


def goal_vector(goal: str) -> jax.Array:
  return jnp.asarray(tasks.goal_state(goal), jnp.float32)


def run(env, setup, config, iterations=1, seed=1):
  agent, params, normalizers, demos = setup
  state = rrf.init_state(agent, config, params, normalizers, jax.random.key(seed))
  step = compiled(env, agent, config)
  history = []
  for _ in range(iterations):
    state, metrics = step(state, goal_vector(GOALS[0]), demos if config.uses_demos else None)
    history.append(jax.device_get(metrics))
  return state, history


# --- pieces ---------------------------------------------------------------------------------------


def test_dapg_weight_schedule():
  config = rrf_config(variant='dapg', dapg_lambda0=0.3, dapg_lambda1=0.9)
  for k in range(6):
    assert float(rrf.dapg_weight(config, jnp.int32(k))) == pytest.approx(0.3 * 0.9**k, rel=1e-6)
  assert float(rrf.dapg_weight(rrf_config(variant='npg', dapg_lambda0=0.3), jnp.int32(0))) == 0.0


def test_ring_buffer_wraps_like_a_deque():
  config = rrf_config(variant='iril', num_envs=2, buffer_episodes=5)
  buffer, reference = rrf.empty_buffer(config), collections.deque(maxlen=5)
  add = jax.jit(rrf.buffer_add)
  steps = config.episode_steps
  for batch in range(4):
    ids = np.arange(2 * batch, 2 * batch + 2, dtype=np.float32)
    observations = np.broadcast_to(ids[:, None, None], (2, steps + 1, tasks.NQ))
    buffer = add(buffer, jnp.asarray(observations), jnp.asarray(np.broadcast_to(ids[:, None, None], (2, steps, 9))))
    reference.extend(ids)
    stored = np.asarray(buffer.episodes.observations[:, 0, 0])
    filled = np.asarray(buffer.episodes.lengths) == steps
    assert filled.sum() == len(reference)
    assert sorted(stored[filled]) == sorted(reference)  # the oldest are the ones overwritten
    assert int(buffer.cursor) == (2 * batch + 2) % 5
  np.testing.assert_array_equal(np.asarray(buffer.episodes.actions[:, 0, 0]), [5, 6, 7, 3, 4])


def test_unfilled_buffer_slots_are_never_sampled():
  config = rrf_config(variant='iril', buffer_episodes=5)
  buffer = rrf.buffer_add(rrf.empty_buffer(config), jnp.ones((2, config.episode_steps + 1, tasks.NQ)),
                          jnp.ones((2, config.episode_steps, 9)))
  batch = relabel.sample_low(jax.random.key(0), buffer.episodes, WINDOWS.window_low, 512)
  np.testing.assert_array_equal(batch.observations, 1.0)


def test_low_rewards_against_numpy():
  rng = np.random.default_rng(4)
  subgoal = np.asarray(tasks.INIT_QPOS, np.float32)[None].repeat(64, 0)
  state = subgoal + rng.normal(scale=rng.choice([0.01, 0.3], size=(64, 1)), size=subgoal.shape).astype(np.float32)
  gaps = np.stack([np.linalg.norm(state[:, list(ix)] - subgoal[:, list(ix)], axis=-1)
                   for ix in tasks.ELEMENT_INDICES.values()], -1)
  robot = np.linalg.norm(state[:, :9] - subgoal[:, :9], axis=-1)
  want = {'sparse': ((gaps < 0.3).all(-1) & (robot < 0.2)).astype(np.float32),
          'euclidean': -np.linalg.norm(state - subgoal, axis=-1),
          'elementwise': (gaps < 0.3).mean(-1)}
  for kind, expected in want.items():
    got = rrf.low_reward(kind, jnp.asarray(state), jnp.asarray(subgoal), reach_threshold=0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert 0 < want['sparse'].sum() < 64  # both outcomes occur


def test_level_samples_segment_the_episode():
  steps, horizon, envs = 7, 3, 2
  rng = np.random.default_rng(5)
  observations = jnp.asarray(rng.normal(size=(envs, steps + 1, tasks.NQ)), jnp.float32)
  rewards = jnp.asarray(rng.integers(0, 2, size=(envs, steps)), jnp.float32)
  trajectory = Trajectory(observations, jnp.zeros((envs, steps, 9)), observations[:, :-1], rewards,
                          *(None,) * 4)
  config = rrf_config(episode_steps=steps, finetune_high=True)
  samples = rrf._level_samples(config, horizon, trajectory, goal_vector(GOALS[0]))
  np.testing.assert_array_equal(samples['low']['ends'], [False, False, True, False, False, True, True])
  high = samples['high']
  np.testing.assert_array_equal(high['obs'], observations[:, [0, 3, 6]])
  np.testing.assert_array_equal(high['next_obs'], observations[:, [3, 6, 7]])
  np.testing.assert_allclose(high['reward'], np.stack([rewards[:, :3].sum(1), rewards[:, 3:6].sum(1),
                                                       rewards[:, 6:].sum(1)], 1))
  np.testing.assert_array_equal(high['ends'], [False, False, True])


def test_flat_agents_take_the_env_reward_over_whole_episodes():
  steps, envs = 7, 2
  rng = np.random.default_rng(6)
  observations = jnp.asarray(rng.normal(size=(envs, steps + 1, tasks.NQ)), jnp.float32)
  rewards = jnp.asarray(rng.integers(0, 2, size=(envs, steps)), jnp.float32)
  goal = goal_vector(GOALS[0])
  trajectory = Trajectory(observations, jnp.zeros((envs, steps, 9)), jnp.broadcast_to(goal, (envs, steps, tasks.NQ)),
                          rewards, *(None,) * 4)
  low = rrf._level_samples(rrf_config(episode_steps=steps, pretrain='gcbc'), 3, trajectory, goal)['low']
  np.testing.assert_array_equal(low['reward'], rewards)
  np.testing.assert_array_equal(low['ends'], [False] * 6 + [True])
  np.testing.assert_array_equal(low['goal'], np.broadcast_to(goal, (envs, steps, tasks.NQ)))


@pytest.mark.parametrize('overrides, message', [
    (dict(finetune_low=False), 'nothing to fine-tune'),
    (dict(from_scratch=('high',)), 'names levels that are not fine-tuned'),
    (dict(pretrain='bc'), 'unknown pre-training method'),
    (dict(pretrain='oracle', variant='iril'), 'no oracle segments'),
    (dict(pretrain='gcbc', finetune_high=True), 'needs a hierarchical agent'),
    (dict(variant='ppo'), 'unknown RRF variant'),
    (dict(low_reward='dense'), 'unknown low-level reward'),
    (dict(variant='iril', num_envs=8, buffer_episodes=4), 'must hold one iteration'),
    (dict(value_batch_size=1000), 'exceeds the 14 low-level samples'),
    (dict(finetune_high=True, value_batch_size=7), 'exceeds the 6 high-level samples'),  # 2 envs x ceil(7 / 3)
    (dict(exploration_log_std=float('nan')), 'exploration_log_std must be finite'),
    (dict(monitor_episodes=-1), 'monitor_episodes must be >= 0'),
    (dict(keep_best=True), 'keep_best selects parameters by the monitor'),
])
def test_config_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    rrf_config(**overrides)


def test_agent_errors(env, setup):
  agent, params, normalizers, _ = setup
  flat = train.make_agent(train.BCConfig(method='gcbc', relabel=WINDOWS))
  with pytest.raises(ValueError, match="agent is flat but config.pretrain is 'ril'"):
    rrf.make_rrf_step(env, flat, rrf_config())
  with pytest.raises(ValueError, match="agent is hierarchical but config.pretrain is 'gcbc'"):
    rrf.make_rrf_step(env, agent, rrf_config(pretrain='gcbc'))
  with pytest.raises(ValueError, match='horizon'):
    rrf.init_state(agent, rrf_config(relabel=RelabelConfig(2, 4, 5)), params, normalizers, jax.random.key(0))
  with pytest.raises(ValueError, match="below the policies' log_std floor"):
    rrf.init_state(agent, rrf_config(exploration_log_std=-3.5), params, normalizers, jax.random.key(0))
  state = rrf.init_state(agent, rrf_config(), params, normalizers, jax.random.key(0))
  with pytest.raises(ValueError, match='needs the demos'):
    rrf.make_rrf_step(env, agent, rrf_config())(state, goal_vector(GOALS[0]), None)


# --- the compiled iteration -----------------------------------------------------------------------


@pytest.mark.parametrize('variant', rrf.VARIANTS)
def test_iteration_compiles_once_and_tunes_only_the_low_level(env, setup, variant):
  config = rrf_config(variant=variant)
  state, history = run(env, setup, config, iterations=3)
  assert compiled(env, setup[0], config)._cache_size() == 1
  assert int(state.iteration) == 3
  for metrics in history:
    for name, value in metrics.items():
      assert np.all(np.isfinite(value)), name
    assert 0 <= metrics['step_completion'] <= 4 and metrics['element_completion'].shape == (7,)
  _, params, _, _ = setup
  np.testing.assert_array_equal(ravel(state.params['high']), ravel(params['high']))
  assert not np.allclose(ravel(state.params['low']), ravel(params['low']))
  assert sum(float(m['low/kl']) > 0 for m in history) + int(state.skipped) == 3
  if variant == 'iril':
    assert int((np.asarray(state.buffer.episodes.lengths) == config.episode_steps).sum()) == 5
  else:
    assert state.buffer is None


def ravel(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_both_levels_fine_tune_separately(env, setup):
  state, history = run(env, setup, rrf_config(variant='dapg', finetune_high=True))
  _, params, _, _ = setup
  for level in ('low', 'high'):
    assert not np.allclose(ravel(state.params[level]), ravel(params[level]))
    assert float(history[0][f'{level}/kl']) <= 1.5 * 0.05
  assert set(state.values) == {'low', 'high'}


def test_pretrain_low_only_and_hiro_learn_their_levels_from_scratch(env, setup):
  """Pre-train-low-only: RIL's low level kept as is, a fresh high level tuned by NPG. HIRO-style:
  both levels fresh, both tuned."""
  agent, params, normalizers, _ = setup
  low_only = rrf_config(variant='npg', finetune_high=True, finetune_low=False, from_scratch=('high',))
  start = rrf.init_state(agent, low_only, params, normalizers, jax.random.key(1))
  assert not np.allclose(ravel(start.params['high']), ravel(params['high']))
  np.testing.assert_array_equal(ravel(start.params['low']), ravel(params['low']))
  state, history = run(env, setup, low_only)
  assert set(state.values) == {'high'} and 'low/kl' not in history[0] and 'high/kl' in history[0]
  np.testing.assert_array_equal(ravel(state.params['low']), ravel(params['low']))
  assert not np.allclose(ravel(state.params['high']), ravel(start.params['high']))
  hiro = rrf_config(variant='npg', finetune_high=True, from_scratch=('low', 'high'))
  fresh = rrf.init_state(agent, hiro, params, normalizers, jax.random.key(1))
  for level in ('low', 'high'):
    assert not np.allclose(ravel(fresh.params[level]), ravel(params[level]))
  state, _ = run(env, setup, hiro)
  for level in ('low', 'high'):
    assert not np.allclose(ravel(state.params[level]), ravel(fresh.params[level]))


def test_exploration_log_std_sets_the_fine_tuned_levels_noise_and_nothing_else(setup):
  agent, params, normalizers, _ = setup
  keep = rrf.init_state(agent, rrf_config(), params, normalizers, jax.random.key(1))
  start = rrf.init_state(agent, rrf_config(exploration_log_std=-2.5), params, normalizers, jax.random.key(1))
  np.testing.assert_array_equal(keep.params['low']['log_std'], params['low']['log_std'])
  np.testing.assert_array_equal(start.params['low']['log_std'], np.full_like(params['low']['log_std'], -2.5))
  np.testing.assert_array_equal(start.params['high']['log_std'], params['high']['log_std'])  # not fine-tuned
  np.testing.assert_array_equal(ravel(start.params['low']['mlp']), ravel(params['low']['mlp']))
  both = rrf.init_state(agent, rrf_config(exploration_log_std=-2.0, finetune_high=True), params, normalizers,
                        jax.random.key(1))
  for level in ('low', 'high'):
    np.testing.assert_array_equal(both.params[level]['log_std'], np.full_like(params[level]['log_std'], -2.0))
  obs, goal = synthetic_demos().observations[:, 0], synthetic_demos().observations[:, -1]
  (mean_keep, log_std_keep), (mean, log_std) = (agent.low.apply(s.params['low'], normalizers['low'], obs, goal)
                                                for s in (keep, start))
  np.testing.assert_array_equal(mean, mean_keep)  # the same actions on average, with other noise
  np.testing.assert_allclose(log_std - log_std_keep, np.broadcast_to(-2.5 - params['low']['log_std'], log_std.shape),
                             atol=1e-6)


def test_monitor_reports_the_mean_agent_that_drew_the_rollouts_and_leaves_training_alone(env, setup):
  """deterministic/* are the mean actions' episodes from the fixed resets, with the parameters
  before the iteration's update; the training stream is the unmonitored run's exactly."""
  agent, _, _, _ = setup
  config = rrf_config(variant='dapg', low_reward='euclidean', finetune_high=True)
  monitored = dataclasses.replace(config, monitor_episodes=3)
  state, history = run(env, setup, config, iterations=2)
  monitored_state, monitored_history = run(env, setup, monitored, iterations=2)
  trained = lambda s: ravel((s.params, s.values, s.value_opt_state, jax.random.key_data(s.key)))
  np.testing.assert_array_equal(trained(monitored_state), trained(state))
  for plain, metrics in zip(history, monitored_history):
    assert set(metrics) - set(plain) == {'deterministic/success', 'deterministic/step_completion',
                                         'deterministic/low/reward', 'deterministic/high/reward'}
    for name, value in plain.items():
      np.testing.assert_array_equal(metrics[name], value, err_msg=name)
  after_one, _ = run(env, setup, config, iterations=1)
  goal = goal_vector(GOALS[0])
  episodes = rollout.agent_rollout(env, agent, after_one.params, after_one.normalizers,
                                   jax.random.split(jax.random.key(rrf.MONITOR_SEED), 3),
                                   jnp.broadcast_to(goal, (3, tasks.NQ)), config.episode_steps, deterministic=True)
  observations, subgoals = np.asarray(episodes.observations), np.asarray(episodes.subgoals)
  low_reward = -np.linalg.norm(observations[:, 1:] - subgoals, axis=-1).mean()
  second = monitored_history[1]
  np.testing.assert_allclose(second['deterministic/low/reward'], low_reward, rtol=1e-5)
  assert second['deterministic/step_completion'] == np.asarray(episodes.step_completion)[:, -1].mean()
  assert second['deterministic/success'] == np.asarray(episodes.success)[:, -1].mean()
  # Neither the sampled rollouts nor the pre-trained parameters: each differs by far more than the tolerance.
  for other in (second['low/reward'], monitored_history[0]['deterministic/low/reward']):
    assert abs(float(other) - low_reward) > 1e-3 * abs(low_reward)


def test_update_best_keeps_the_first_highest_success_then_step_completion():
  """Against a brute-force argmax over a per-goal score sequence (ties included), vmapped over goals
  as the per-goal step uses it."""
  successes = np.array([[0.0, 0.5, 0.5, 0.25, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                        [0.25, 0.0, 0.25, 0.25, 0.0, 0.0]], np.float32)  # [goals, iterations]
  completions = np.array([[1.0, 2.0, 3.0, 4.0, 3.0, 3.5], [0.5, 0.5, 0.0, 0.5, 0.25, 0.5],
                          [2.0, 4.0, 2.0, 3.0, 4.0, 1.0]], np.float32)
  goals, iterations = successes.shape
  params = lambda k: {'low': {'w': jnp.full((goals, 2), k, jnp.float32)}}  # parameters after k updates
  best = jax.vmap(rrf.init_best)(params(-1))
  update = jax.jit(jax.vmap(rrf.update_best, in_axes=(0, 0, 0, None)))
  for k in range(iterations):
    metrics = {'deterministic/success': jnp.asarray(successes[:, k]),
               'deterministic/step_completion': jnp.asarray(completions[:, k])}
    best, kept = update(best, params(k), metrics, jnp.int32(k))
    for g in range(goals):
      want = max(range(k + 1), key=lambda i: (successes[g, i], completions[g, i], -i))
      assert int(kept['best/iteration'][g]) == int(best.iteration[g]) == want
      assert float(kept['best/success'][g]) == successes[g, want]
      assert float(best.step_completion[g]) == completions[g, want]
      np.testing.assert_array_equal(best.params['low']['w'][g], want)
  assert [int(i) for i in best.iteration] == [5, 0, 3]
  assert rrf.update_best(None, params(0), metrics, jnp.int32(0)) == (None, {})


def test_keep_best_holds_the_parameters_the_monitor_scored_highest(env, setup, monkeypatch):
  """The compiled step with keep_best: training and every other metric are the plain run's; the kept
  parameters are the pre-update parameters of the iteration whose logged monitor scores rank first.
  A random agent never completes an element in 7 steps, so the monitor's scores are replaced by
  quantised functions of its episodes (which the parameters drive), to make them vary and tie."""
  def varied_scores(trajectory):
    wiggle = jnp.abs(jnp.sin(1e3 * jnp.sum(trajectory.observations[:, -1, :tasks.ROBOT_DOF], axis=-1)))
    return {'deterministic/success': jnp.round(2 * wiggle[0]) / 2,
            'deterministic/step_completion': jnp.round(4 * wiggle[1])}

  monkeypatch.setattr(rrf, 'monitor_metrics', varied_scores)
  agent, params, normalizers, demos = setup
  config = rrf_config(variant='dapg', low_reward='euclidean', monitor_episodes=2)

  def run_monitored(config, iterations=6):
    state = rrf.init_state(agent, config, params, normalizers, jax.random.key(3))
    step = rrf.jit_rrf_step(env, agent, config)
    pre_update, history = [], []
    for _ in range(iterations):
      pre_update.append(jax.device_get(state.params))
      state, metrics = step(state, goal_vector(GOALS[0]), demos)
      history.append(jax.device_get(metrics))
    return state, pre_update, history

  plain, pre_update, plain_history = run_monitored(config)
  kept, _, history = run_monitored(dataclasses.replace(config, keep_best=True))
  np.testing.assert_array_equal(ravel((kept.params, kept.values)), ravel((plain.params, plain.values)))
  for before, metrics in zip(plain_history, history):
    assert set(metrics) - set(before) == set(rrf.BEST)
    for name, value in before.items():
      np.testing.assert_array_equal(metrics[name], value, err_msg=name)
  scores = [(float(m['deterministic/success']), float(m['deterministic/step_completion'])) for m in history]
  assert len(set(scores)) > 2, scores  # they varied, so the choice is not the first by default
  for k, metrics in enumerate(history):
    want = max(range(k + 1), key=lambda i: (*scores[i], -i))
    assert int(metrics['best/iteration']) == want and float(metrics['best/success']) == scores[want][0]
  np.testing.assert_array_equal(ravel(rrf.tuned_params(kept)), ravel(pre_update[int(kept.best.iteration)]))
  assert plain.best is None and rrf.tuned_params(plain) is plain.params


def test_same_key_same_run_other_key_other_run(env, setup):
  config = rrf_config(variant='dapg')
  first, second, other = (run(env, setup, config, iterations=2, seed=s) for s in (7, 7, 8))
  np.testing.assert_array_equal(ravel(first[0].params), ravel(second[0].params))
  for a, b in zip(first[1], second[1]):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(ravel(first[0].params['low']), ravel(other[0].params['low']))


def test_per_goal_vmap_equals_separate_steps(env, setup):
  agent, params, normalizers, demos = setup
  config = rrf_config(variant='iril')
  keys = jax.random.split(jax.random.key(3), len(GOALS))
  stacked = jax.vmap(lambda k: rrf.init_state(agent, config, params, normalizers, k))(keys)
  goals = jnp.stack([goal_vector(g) for g in GOALS])
  stacked, metrics = compiled(env, agent, config, per_goal=True)(stacked, goals, demos)
  for g in range(len(GOALS)):
    alone = rrf.init_state(agent, config, params, normalizers, keys[g])
    alone, alone_metrics = compiled(env, agent, config)(alone, goals[g], demos)
    # Same rollouts to float rounding; the steps then agree to the float32 rounding of 10 CG iterations.
    start = ravel(params['low'])
    step_vmapped = ravel(jax.tree.map(lambda x: x[g], stacked.params['low'])) - start
    step_alone = ravel(alone.params['low']) - start
    assert np.linalg.norm(step_vmapped - step_alone) < 1e-2 * np.linalg.norm(step_alone)
    np.testing.assert_allclose(stacked.buffer.episodes.observations[g], alone.buffer.episodes.observations,
                               rtol=1e-5, atol=1e-5)
    for name in ('success', 'step_completion', 'low/reward', 'low/kl'):
      np.testing.assert_allclose(metrics[name][g], alone_metrics[name], rtol=1e-3, atol=1e-6)


def test_bc_term_pulls_the_low_level_toward_the_demos(env, setup):
  """With a dominant BC weight the natural-gradient step raises the demos' relabeled log-likelihood
  (Algorithm 2's full enumeration), and more than the pure policy-gradient step does."""
  agent, params, normalizers, demos = setup
  tuples = relabel.enumerate_low(jax.device_get(demos), WINDOWS.window_low)

  def demo_log_likelihood(low_params):
    return float(jnp.mean(agent.low.log_prob(low_params, normalizers['low'], tuples.observations, tuples.goals,
                                             tuples.actions)))

  before = demo_log_likelihood(params['low'])
  dapg = run(env, setup, rrf_config(variant='dapg', dapg_lambda0=100.0, bc_batch_size=64))[0]
  npg_only = run(env, setup, rrf_config(variant='npg'))[0]
  assert demo_log_likelihood(dapg.params['low']) > before
  assert demo_log_likelihood(dapg.params['low']) > demo_log_likelihood(npg_only.params['low'])


@pytest.mark.parametrize('method, variant', [('gcbc', 'npg'), ('gcbc', 'dapg'), ('gcbc_final', 'dapg')])
def test_flat_baselines_fine_tune_through_the_same_step(env, method, variant):
  """GCBC / BC + fine-tuning and DAPG-GCBC / DAPG-BC: a flat agent pre-trained by `method` runs the
  same compiled iteration, and its BC term is the gradient of the likelihood of its own
  pre-training tuples (against the exact enumeration: GCBC's windows of W_h, BC's final states)."""
  demos = synthetic_demos()
  agent, start = pretrained(method)
  config = rrf_config(variant=variant, pretrain=method)
  state, history = run(env, (agent, start.params, start.normalizers, train.device_demos(demos)), config,
                       iterations=2)
  assert set(state.params) == {'low'} and compiled(env, agent, config)._cache_size() == 1
  assert all(np.isfinite(v).all() for m in history for v in m.values())
  assert not np.allclose(ravel(state.params['low']), ravel(start.params['low']))
  if variant == 'npg':
    return
  if method == 'gcbc':
    t = relabel.enumerate_low(demos, WINDOWS.window_high)
    tuples = (t.observations, t.goals, t.actions)
  else:  # every step, with its demo's final state as the goal
    steps = [(i, k) for i, length in enumerate(demos.lengths) for k in range(length)]
    tuples = (np.stack([demos.observations[i, k] for i, k in steps]),
              np.stack([demos.observations[i, demos.lengths[i]] for i, _ in steps]),
              np.stack([demos.actions[i, k] for i, k in steps]))
  params, normalizer = start.params['low'], start.normalizers['low']
  exact = ravel(jax.grad(lambda p: jnp.mean(agent.low.log_prob(p, normalizer, *tuples)))(params))
  batches = rrf._bc_batches(rrf_config(variant=variant, pretrain=method, bc_batch_size=20000), 'low',
                            jax.random.key(3), [train.device_demos(demos)])
  sampled = np.asarray(rrf._bc_gradient(agent.low, params, normalizer, batches))
  assert np.dot(sampled, exact) / (np.linalg.norm(sampled) * np.linalg.norm(exact)) > 0.99
  assert int(batches[0][1]) == len(tuples[0])


def test_oracle_segmentation_agent_fine_tunes_with_its_segments_as_the_bc_pool(env):
  """Hierarchical IL on oracle segments then DAPG: the BC term draws from the demos with their
  element boundaries, every step once (its tuple count is the number of steps)."""
  demos = synthetic_demos()
  boundaries = np.array([[2, 4, 6, 8], [1, 3, 3, 6], [2, 3, 4, 5]], np.int32)
  agent, start = pretrained('oracle')
  data = train.training_data('oracle', demos, boundaries)
  state, history = run(env, (agent, start.params, start.normalizers, data),
                       rrf_config(variant='dapg', pretrain='oracle', finetune_high=True))
  assert all(np.isfinite(v).all() for v in history[0].values())
  for level in ('low', 'high'):
    assert not np.allclose(ravel(state.params[level]), ravel(start.params[level]))
    batches = rrf._bc_batches(rrf_config(pretrain='oracle', finetune_high=True), level, jax.random.key(1), [data])
    assert int(batches[0][1]) == int(demos.lengths.sum())
  with pytest.raises(ValueError, match='needs the element boundaries'):
    train.training_data('oracle', demos)
