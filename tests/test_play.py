"""Play generation: plan parsing, candidate draws, cutting rollouts into demos (against a brute-force
reference), and a small end-to-end run of the scripted expert through the dataset writer, the loader
and the replay check, which must reject a tampered demo.

The expert's constructor and the rollout's compile are slow (about a minute each on 2 cores), so one
module-scoped run serves all end-to-end tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from rpl_jax.data import play
from rpl_jax.data.demos import DatasetWriter, load_demos, pad_demos, read_element_steps, read_metadata

# The knobs, the switch and the slide cabinet are the expert's most reliable elements so far; in this
# order it completes all four within 500 steps in about two trials of three, and play_shard draws
# candidates until NUM_DEMOS are accepted.
ORDERING = 'topknob-bottomknob-switch-slide'
MAX_STEPS, EXTRA_STEPS = 500, 5
NUM_DEMOS, BATCH_SIZE = 2, 4


def test_parse_orderings():
  plans = play.parse_orderings(['microwave-kettle-topknob-hinge',
                               ('slide cabinet', 'light switch', 'kettle', 'top burner')])
  names = [[tasks.ELEMENTS[i] for i in p] for p in plans]
  assert names == [['microwave', 'kettle', 'top burner', 'hinge cabinet'],
                   ['slide cabinet', 'light switch', 'kettle', 'top burner']]
  assert plans.dtype == np.int32 and len(play.parse_orderings(tasks.ALL_ORDERINGS)) == 24


@pytest.mark.parametrize('orderings, message', [
    (['microwave-kettle-toaster-hinge'], "unknown kitchen element 'toaster'"),
    (['microwave-kettle-hinge'], 'has 3 elements; play demos need exactly 4'),
    (['microwave-kettle-hinge-slide-switch'], 'has 5 elements'),
    (['microwave-kettle-microwave-hinge'], 'repeats an element'),
    ([], 'non-empty sequence'),
    ('microwave-kettle-topknob-hinge', 'non-empty sequence of strings'),
])
def test_parse_orderings_errors(orderings, message):
  with pytest.raises(ValueError, match=message):
    play.parse_orderings(orderings)
  with pytest.raises(ValueError, match=message):
    play.PlayConfig(orderings=orderings)


def test_candidates_depend_only_on_seed_shard_and_index():
  plans = play.parse_orderings(tasks.ALL_ORDERINGS)
  seeds, drawn = play.candidates(3, 1, 0, 10, plans)
  seeds_a, drawn_a = play.candidates(3, 1, 0, 4, plans)
  seeds_b, drawn_b = play.candidates(3, 1, 4, 6, plans)
  assert (np.concatenate([seeds_a, seeds_b]) == seeds).all() and (np.concatenate([drawn_a, drawn_b]) == drawn).all()
  assert seeds.dtype == np.int32 and len(set(seeds.tolist())) == 10
  assert not (play.candidates(3, 2, 0, 10, plans)[0] == seeds).any()
  assert all(any((p == q).all() for q in plans) for p in drawn)


def reference_cut(completion, nonfinite, max_steps, extra_steps):
  """One rollout at a time, by the rules in play.py's docstring."""
  lengths, outcomes = [], []
  for c, bad in zip(completion, nonfinite):
    first = next((t for t in range(max_steps + 1) if c[t].all()), None)
    length = max_steps if first is None else max(first + extra_steps, 1)
    if bad[:length].any():
      outcome = play.NONFINITE
    elif first is None:
      outcome = play.INCOMPLETE
    elif not c[length].all():
      outcome = play.UNDONE
    else:
      outcome = play.ACCEPTED
    lengths.append(length)
    outcomes.append(outcome)
  return np.array(lengths), np.array(outcomes)


def test_cut_matches_reference():
  rng = np.random.default_rng(0)
  max_steps, extra_steps, batch = 12, 3, 400
  # Each element turns on at a random step (or never) and sometimes off again; rare non-finite steps.
  on = rng.integers(0, max_steps + 6, size=(batch, 1, 4))
  off = on + rng.integers(1, 8, size=(batch, 1, 4)) + 100 * (rng.random((batch, 1, 4)) < 0.7)
  steps = np.arange(max_steps + extra_steps + 1)[None, :, None]
  completion = (steps >= on) & (steps < off)
  nonfinite = rng.random((batch, max_steps + extra_steps)) < 0.01
  lengths, outcomes = play.cut(completion, nonfinite, max_steps, extra_steps)
  want_lengths, want_outcomes = reference_cut(completion, nonfinite, max_steps, extra_steps)
  assert (lengths == want_lengths).all() and (outcomes == want_outcomes).all()
  assert set(outcomes.tolist()) == {play.ACCEPTED, play.NONFINITE, play.INCOMPLETE, play.UNDONE}
  # Extra steps past max_steps are allowed to finish a demo, but not to complete one.
  late = np.zeros((1, max_steps + extra_steps + 1, 4), bool)
  late[0, max_steps + 1:] = True
  assert play.cut(late, np.zeros((1, max_steps + extra_steps), bool), max_steps, extra_steps)[1][0] == play.INCOMPLETE
  with pytest.raises(ValueError, match='shorter than max_steps'):
    play.cut(completion, nonfinite, max_steps + 1, extra_steps)


def test_element_attempts():
  ever = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], bool)
  attempted, succeeded = play.element_attempts(ever[:, None, :], max_steps=0)
  assert attempted.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
  assert succeeded.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]


PLAY_ENV = KitchenConfig(backend='cpu', reset_noise_scale=0.005)


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  from envs.kitchen.expert import Expert  # slow to build: only for the tests that need it
  env = KitchenEnv(PLAY_ENV)
  config = play.PlayConfig(orderings=(ORDERING,), max_steps=MAX_STEPS, extra_steps=EXTRA_STEPS, batch_size=BATCH_SIZE)
  player = play.Player(env, Expert(env.model), config)
  stats = play.PlayStats(MAX_STEPS)
  batch = play.play_shard(player, seed=0, shard=0, num_demos=NUM_DEMOS, stats=stats, max_rollouts=4 * BATCH_SIZE)
  path = str(tmp_path_factory.mktemp('play'))
  writer = DatasetWriter(path, config={'orderings': [ORDERING]}, backend=env.backend, seed=0, demos_per_shard=NUM_DEMOS)
  writer.write_shard(0, [batch.demo(i) for i in range(NUM_DEMOS)], seeds=batch.seeds,
                     element_orders=[play.element_names(p) for p in batch.plans],
                     element_steps=play.element_steps(batch.completion))
  return player, stats, batch, path


def test_recorded_element_steps_are_where_a_replay_first_completes_each_element(generated):
  """The oracle-segmentation baseline's boundaries (metadata) against replaying each demo's actions
  from its seed and watching the true state."""
  player, _, _, path = generated
  meta = read_metadata(path)['shards'][0]
  plans = play.parse_orderings(['-'.join(order) for order in meta['element_orders']])
  padded, recorded = pad_demos(load_demos(path)), read_element_steps(path)
  env = KitchenEnv(PLAY_ENV)

  @jax.jit
  def first_complete(seed, plan, goal, actions):
    state = env.reset(play.demo_keys(seed)[0], goal)

    def step(state, action):
      state = env.step(state, action)
      return state, tasks.element_completion(state.data.qpos)[plan]

    complete = jnp.concatenate([tasks.element_completion(state.data.qpos)[plan][None],
                                jax.lax.scan(step, state, actions)[1]])
    return jnp.argmax(complete, axis=0)

  for i, seed in enumerate(meta['seeds']):
    steps = first_complete(seed, plans[i], jnp.asarray(play.goal_states(plans[i:i + 1])[0]), padded.actions[i])
    np.testing.assert_array_equal(steps, recorded[i])
    assert (np.diff(recorded[i]) >= 0).all() and recorded[i][-1] <= padded.lengths[i]


def test_generated_demos_round_trip(generated):
  _, stats, batch, path = generated
  summary = stats.summary()
  assert summary['accepted'] == NUM_DEMOS and stats.rollouts == stats.outcomes.sum() >= NUM_DEMOS
  assert stats.outcomes[play.ACCEPTED] == NUM_DEMOS + summary['surplus_accepted']
  assert summary['elements']['slide cabinet']['attempts'] >= NUM_DEMOS
  for i in range(NUM_DEMOS):
    # Cut EXTRA_STEPS after the first state with all four elements complete, still complete at the end.
    done = batch.completion[i].all(axis=-1)
    assert batch.lengths[i] == np.argmax(done) + EXTRA_STEPS and done[batch.lengths[i]]
  demos = load_demos(path)
  assert len(demos) == NUM_DEMOS
  for i, demo in enumerate(demos):
    t = batch.lengths[i]
    assert demo.observations.shape == (t + 1, 30) and demo.actions.shape == (t, 9)
    assert (demo.observations == batch.observations[i, :t + 1]).all() and (demo.actions == batch.actions[i, :t]).all()
    # The observations are noisy qpos: the four elements show complete at the end.
    assert tasks.element_completion(demo.observations[-1])[batch.plans[i]].all()
  shard = read_metadata(path)['shards'][0]
  assert shard['seeds'] == batch.seeds.tolist()
  assert shard['element_orders'] == [list(tasks.parse_elements(ORDERING))] * NUM_DEMOS


def test_shards_are_reproducible(generated):
  player, _, batch, _ = generated
  again = play.play_shard(player, seed=0, shard=0, num_demos=NUM_DEMOS, stats=play.PlayStats(MAX_STEPS),
                          max_rollouts=4 * BATCH_SIZE)
  for got, want in zip(again, batch):
    assert got.tobytes() == want.tobytes()


def test_replay_accepts_saved_demos_and_rejects_tampered_ones(generated):
  player, _, _, path = generated
  meta = read_metadata(path)['shards'][0]
  seeds = np.array(meta['seeds'], np.int32)
  plans = play.parse_orderings(['-'.join(order) for order in meta['element_orders']])
  padded = pad_demos(load_demos(path))
  assert player.replay(seeds, plans, padded.actions, padded.lengths).all()
  tampered = padded.actions.copy()
  tampered[0] = 0.0  # the robot holds still: nothing gets done
  tampered[1] = -tampered[1]
  assert not player.replay(seeds, plans, tampered, padded.lengths).any()
  # Cut at half length, the demos are incomplete.
  assert not player.replay(seeds, plans, padded.actions, padded.lengths // 2).any()


class _StillExpert:
  """Stands in for the scripted expert: always the zero action, so executed actions are the noise alone.
  Its state counts steps; it is "in transit" on even steps."""

  def init(self, key, plan):
    return jnp.int32(0)

  def act(self, state, qpos):
    return np.zeros(9, np.float32), state + 1

  @staticmethod
  def in_transit(state):
    return state % 2 == 0


@pytest.mark.parametrize('noise', [0.0, 0.3])
def test_action_noise_is_executed_and_stored(noise):
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  plans = play.parse_orderings([ORDERING] * 2)
  seeds = np.array([3, 4], np.int32)
  r = play.rollout(env, _StillExpert(), seeds, plans, play.goal_states(plans), num_steps=40, action_noise=noise)
  actions = np.asarray(r.actions)
  if noise == 0.0:
    np.testing.assert_array_equal(actions, 0.0)
    return
  assert np.abs(actions).max() <= 1.0
  assert abs(actions.std() - noise) < 0.05 * noise and abs(actions.mean()) < 0.05  # clipping at 1 is rare at 0.3
  assert not np.allclose(actions[0], actions[1])  # each demo draws its own noise
  # The stored actions are the executed ones: replaying them from the reset key gives the same states.
  def replay(seed, goal, actions):
    state = env.reset(play.demo_keys(seed)[0], goal)
    return jax.lax.scan(lambda s, a: (env.step(s, a),) * 2, state, actions)[1].obs

  replayed = jax.jit(jax.vmap(replay))(seeds, play.goal_states(plans), r.actions)
  # (Up to float rounding: XLA fuses the two graphs differently. Stored zero actions would be ~1e-2 off.)
  np.testing.assert_allclose(np.asarray(replayed), np.asarray(r.observations)[:, 1:], atol=1e-5)


def test_correlated_noise_has_its_std_and_lag_one_correlation():
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  plans = play.parse_orderings([ORDERING] * 4)
  r = play.rollout(env, _StillExpert(), np.arange(4, dtype=np.int32), plans, play.goal_states(plans),
                   num_steps=400, action_noise=0.1, noise_correlation=0.8)
  actions = np.asarray(r.actions)  # [4, 400, 9]; clipping at 1 is 10 sigma away
  assert abs(actions.std() - 0.1) < 0.01
  lag_one = np.mean(actions[:, 1:] * actions[:, :-1]) / np.mean(actions**2)
  assert abs(lag_one - 0.8) < 0.05  # 14,400 pairs: the estimate's std is about 0.01


def test_transit_only_noise_leaves_the_other_steps_clean():
  env = KitchenEnv(KitchenConfig(backend='cpu'))
  plans = play.parse_orderings([ORDERING] * 2)
  r = play.rollout(env, _StillExpert(), np.array([3, 4], np.int32), plans, play.goal_states(plans), num_steps=20,
                   action_noise=0.3, noise_in_transit_only=True)
  actions = np.asarray(r.actions)
  np.testing.assert_array_equal(actions[:, 1::2], 0.0)  # the stub is in transit on even steps only
  assert (np.abs(actions[:, ::2]) > 0).all()


@pytest.mark.parametrize('correlation', [-0.1, 1.0])
def test_noise_correlation_out_of_range_is_refused(correlation):
  with pytest.raises(ValueError, match='noise_correlation must be in'):
    play.PlayConfig(noise_correlation=correlation)
