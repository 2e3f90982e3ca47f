"""The AW-Opt-style trainer: AWR weights and Q targets against closed forms and a Python loop, the
goal-progress reward against brute force, and the compiled iteration (compiles once, fills the
replay buffer, moves the actor and the critic; the mean-action monitor and keeping the best monitored
actor change nothing else)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from rpl_jax import awopt, networks, rrf, train
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.relabel import RelabelConfig

GOAL = 'microwave-kettle-topknob-hinge'


def test_advantage_weights_closed_form():
  q_taken = np.array([1.0, 0.5, 3.0, -2.0, 10.0], np.float32)
  q_mean = np.array([0.5, 0.5, 1.0, 0.0, 0.0], np.float32)
  got = awopt.advantage_weights(jnp.asarray(q_taken), jnp.asarray(q_mean), beta=0.5, max_weight=20.0)
  np.testing.assert_allclose(got, [np.e, 1.0, 20.0, np.e**-4, 20.0], rtol=1e-6)  # e^4 and e^20 clipped to 20


def test_q_targets_against_a_python_loop():
  rng = np.random.default_rng(0)
  reward, next_q, done = rng.normal(size=8), rng.normal(size=8), rng.random(8) < 0.4
  expected = [r + 0.9 * (0.0 if d else q) for r, q, d in zip(reward, next_q, done)]
  np.testing.assert_allclose(awopt.q_targets(jnp.asarray(reward), jnp.asarray(done), jnp.asarray(next_q), 0.9),
                             expected, rtol=1e-6)


def test_progress_reward_against_brute_force():
  goal = tasks.goal_state(GOAL).astype(np.float32)
  start = tasks.INIT_QPOS.astype(np.float32)
  states = [start, tasks.goal_state('microwave'), tasks.goal_state('microwave-kettle-slide'), goal,
            tasks.goal_state('kettle')]
  asked = set(tasks.parse_elements(GOAL))
  for s, s_next in zip(states[:-1], states[1:]):
    done_now = lambda x: {e for e, c in zip(tasks.ELEMENTS, np.asarray(tasks.element_completion(x))) if c} & asked
    reward, done = awopt.progress(jnp.asarray(s, jnp.float32), jnp.asarray(s_next, jnp.float32), jnp.asarray(goal))
    assert float(reward) == len(done_now(s_next)) - len(done_now(s)) and bool(done) == (done_now(s_next) == asked)


def test_config_and_agent_errors():
  with pytest.raises(ValueError, match='hold one iteration'):
    awopt.AWOptConfig(num_envs=4, episode_steps=10, buffer_transitions=39)
  with pytest.raises(ValueError, match='flat agent'):
    awopt.AWOptConfig(pretrain='ril')
  with pytest.raises(ValueError, match='keep_best selects parameters by the monitor'):
    awopt.AWOptConfig(keep_best=True)
  hierarchical = train.make_agent(train.BCConfig(relabel=RelabelConfig(2, 4, 3)))
  with pytest.raises(ValueError, match='flat goal-conditioned agent'):
    awopt.check_agent(hierarchical)


def test_iteration_compiles_once_fills_the_buffer_and_trains_both_networks():
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  rng = np.random.default_rng(0)
  observations = np.asarray(tasks.INIT_QPOS, np.float32) + 0.05 * rng.normal(size=(3, 9, tasks.NQ)).astype(np.float32)
  demos = PaddedDemos(observations, rng.uniform(-1, 1, size=(3, 8, 9)).astype(np.float32), np.array([8, 6, 5], np.int32))
  bc = train.BCConfig(method='gcbc', relabel=RelabelConfig(2, 4, 3), policy=networks.PolicyConfig(hidden=(8,)))
  agent = train.make_agent(bc)
  pretrained = train.init_state(agent, bc, demos, jax.random.key(0))
  config = awopt.AWOptConfig(num_envs=2, episode_steps=7, updates=4, batch_size=16, buffer_transitions=20,
                             q_hidden=(8,))
  state = awopt.init_state(agent, config, pretrained.params, pretrained.normalizers, jax.random.key(1))
  start = jax.device_get(state)
  step = jax.jit(awopt.make_awopt_step(env, agent, config), donate_argnums=0)
  goal = jnp.asarray(tasks.goal_state(GOAL), jnp.float32)
  sizes, history = [], []
  for _ in range(2):
    state, metrics = step(state, goal, train.device_demos(demos))
    sizes.append(int(metrics['buffer_size']))
    history.append(jax.device_get(metrics))
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
  assert step._cache_size() == 1 and sizes == [14, 20] and int(state.cursor) == 8  # 28 written, capacity 20
  ravel = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  for name in ('q', 'q_target'):
    assert not np.allclose(ravel(getattr(state, name)), ravel(getattr(start, name)))
  assert not np.allclose(ravel(state.params['low']), ravel(start.params['low']))
  # The buffer holds the second iteration's transitions at slots 14..19 and 0..7, each (s, a, s') of a rollout.
  assert np.asarray(state.buffer.obs[:8]).any() and np.asarray(state.buffer.obs[8:14]).any()
  # The mean-action monitor, and keeping the best monitored actor, add their metrics and change nothing else.
  monitored = dataclasses.replace(config, monitor_episodes=2, keep_best=True)
  monitored_state = awopt.init_state(agent, monitored, pretrained.params, pretrained.normalizers, jax.random.key(1))
  monitored_step = jax.jit(awopt.make_awopt_step(env, agent, monitored), donate_argnums=0)
  pre_update, scores = [], []
  for plain in history:
    pre_update.append(jax.device_get(monitored_state.params))
    monitored_state, metrics = monitored_step(monitored_state, goal, train.device_demos(demos))
    assert set(metrics) - set(plain) == {'deterministic/success', 'deterministic/step_completion', *rrf.BEST}
    for name, value in plain.items():
      np.testing.assert_array_equal(metrics[name], value, err_msg=name)
    scores.append((float(metrics['deterministic/success']), float(metrics['deterministic/step_completion'])))
    want = max(range(len(scores)), key=lambda i: (*scores[i], -i))
    assert int(metrics['best/iteration']) == want
  np.testing.assert_array_equal(ravel((monitored_state.params, monitored_state.q, monitored_state.buffer)),
                                ravel((state.params, state.q, state.buffer)))
  np.testing.assert_array_equal(ravel(rrf.tuned_params(monitored_state)), ravel(pre_update[want]))
