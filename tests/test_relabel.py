"""Relay relabeling: the exact enumeration against brute-force loops, the device samplers' support,
uniformity (chi-square) and index arithmetic against that enumeration, windows that never cross a
demo's end (padding is NaN here, so any use of it shows), and config errors raised before compiling.

Demo states encode their own indices (`encoded_demos`), so every sampled row says which demo and step
it came from."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpl_jax import relabel
from rpl_jax.data.demos import Demo, PaddedDemos, pad_demos

LENGTHS = (1, 3, 7, 12)
# jax's monitoring event for an XLA compile (jax._src.dispatch.BACKEND_COMPILE_EVENT).
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


def brute_force(lengths, window):
  """Every (demo, t, w) with 1 <= w <= window and t + w <= T, in (demo, w, t) order."""
  return [(i, t, w) for i, length in enumerate(lengths) for w in range(1, window + 1) for t in range(length + 1)
          if t + w <= length]


def encoded_states(demo, t):
  """States that encode where they are: (demo, t, 1000 demo + t + 0.5 k for k = 2..29), float32 [n, 30]."""
  demo, t = (np.asarray(x, np.float32)[:, None] for x in (demo, t))
  return np.concatenate([demo, t, 1000 * demo + t + 0.5 * np.arange(2, 30, dtype=np.float32)], 1)


def encoded_demos(lengths) -> PaddedDemos:
  """Padded demos of encoded states and actions (demo, t, -t, ..., -t), NaN everywhere past each demo's end."""
  demos = []
  for i, length in enumerate(lengths):
    steps = np.arange(length + 1)
    actions = np.concatenate([np.full((length, 1), i), steps[:-1, None], -np.tile(steps[:-1, None], 7)], 1)
    demos.append(Demo(encoded_states(np.full(length + 1, i), steps), actions.astype(np.float32)))
  padded = pad_demos(demos)
  valid_steps = np.arange(padded.observations.shape[1])[None, :] <= padded.lengths[:, None]
  padded.observations[~valid_steps] = np.nan
  padded.actions[~valid_steps[:, 1:]] = np.nan
  return padded


def decode(states):
  """(demo, t) of sampled encoded states, after checking that they are finite (no padding) and exact."""
  states = np.asarray(states)
  assert np.isfinite(states).all(), 'a batch used padding'
  demo, t = states[:, 0].astype(int), states[:, 1].astype(int)
  np.testing.assert_array_equal(states, encoded_states(demo, t))
  return demo, t


def chi_square_p_value(observed, expected):
  """Survival function of the chi-square statistic with len(observed) - 1 degrees of freedom."""
  statistic = np.sum((observed - expected) ** 2 / expected)
  return float(jax.scipy.special.gammaincc((len(observed) - 1) / 2, statistic / 2))


@contextlib.contextmanager
def no_compiles():
  """Fails the test if XLA compiled anything inside the block."""
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == COMPILE_EVENT:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles, 'something compiled'


# --- exact enumeration ----------------------------------------------------------------------------


@pytest.mark.parametrize('window', range(1, 6))
def test_enumeration_and_counts_match_brute_force(window):
  expected = brute_force(LENGTHS, window)
  assert list(zip(*(a.tolist() for a in relabel.enumerate_windows(LENGTHS, window)))) == expected
  per_demo = np.bincount([i for i, _, _ in expected], minlength=len(LENGTHS))
  np.testing.assert_array_equal(relabel.tuple_counts(np.array(LENGTHS), window), per_demo)
  np.testing.assert_array_equal(relabel.tuple_counts(jnp.array(LENGTHS), window), per_demo)


def test_enumerate_low_and_high_match_brute_force():
  demos = encoded_demos(LENGTHS)
  obs, act = demos.observations, demos.actions
  low = relabel.enumerate_low(demos, 4)
  rows = brute_force(LENGTHS, 4)
  np.testing.assert_array_equal(low.observations, [obs[i, t] for i, t, _ in rows])
  np.testing.assert_array_equal(low.actions, [act[i, t] for i, t, _ in rows])
  np.testing.assert_array_equal(low.goals, [obs[i, t + w] for i, t, w in rows])
  high = relabel.enumerate_high(demos, 2, 5)
  rows = brute_force(LENGTHS, 5)
  np.testing.assert_array_equal(high.observations, [obs[i, t] for i, t, _ in rows])
  np.testing.assert_array_equal(high.subgoals, [obs[i, t + min(w, 2)] for i, t, w in rows])
  np.testing.assert_array_equal(high.goals, [obs[i, t + w] for i, t, w in rows])
  assert np.isfinite(high.goals).all()


@pytest.mark.parametrize('lengths, window', [(LENGTHS, 5), ((1, 2, 259, 260, 261, 700), 260),
                                             ((5, 1999, 2000), 1500)])
def test_index_arithmetic_is_the_enumeration_order(lengths, window):
  """Every global tuple index maps to the enumeration's tuple at that position, including windows
  longer than the demo and (1999, 1500)-sized blocks."""
  expected = relabel.enumerate_windows(lengths, window)
  index = jnp.arange(len(expected[0]), dtype=jnp.int32)
  got = jax.jit(relabel._locate, static_argnums=2)(index, jnp.array(lengths, jnp.int32), window)
  for g, e in zip(got, expected):
    np.testing.assert_array_equal(g, e)


def test_index_arithmetic_near_the_int32_limit():
  """A single demo with about MAX_TUPLES tuples: indices near block boundaries and the very end."""
  length = 46_000
  assert relabel.tuple_counts(np.array([length], np.int64), length)[0] <= relabel.MAX_TUPLES
  w = np.array([1, 1, 2, 17_000, 17_000, 45_999, 45_999, 46_000], np.int64)
  t = np.array([0, 45_999, 0, 0, length - 17_000, 0, 1, 0], np.int64)
  index = (w - 1) * (2 * length + 1 - (w - 1)) // 2 + t  # tuples of smaller widths, then t
  demo, got_t, got_w = relabel._locate(jnp.array(index, jnp.int32), jnp.array([length], jnp.int32), length)
  np.testing.assert_array_equal(demo, 0)
  np.testing.assert_array_equal(got_t, t)
  np.testing.assert_array_equal(got_w, w)


# --- sampling ---------------------------------------------------------------------------------------


def test_sampler_support_is_the_enumeration():
  demo, t, w = relabel.sample_windows(jax.random.key(0), jnp.array(LENGTHS), 5, 20_000)
  assert demo.dtype == t.dtype == w.dtype == jnp.int32 and demo.shape == (20_000,)
  assert set(zip(*(np.asarray(a).tolist() for a in (demo, t, w)))) == set(brute_force(LENGTHS, 5))


def test_sampler_is_uniform_over_tuples():
  lengths, window, draws = (1, 3, 7, 12, 40), 10, 200_000
  tuples = brute_force(lengths, window)
  position = {x: k for k, x in enumerate(tuples)}
  sample = relabel.sample_windows(jax.random.key(1), jnp.array(lengths), window, draws)
  observed = np.bincount([position[x] for x in zip(*(np.asarray(a).tolist() for a in sample))],
                         minlength=len(tuples))
  expected = np.full(len(tuples), draws / len(tuples))
  assert chi_square_p_value(observed, expected) > 1e-3
  # The test has power: picking the demo uniformly first (a common shortcut) over-samples short demos.
  rng = np.random.default_rng(0)
  demo = rng.integers(len(lengths), size=draws)
  per_demo = relabel.tuple_counts(np.array(lengths), window)
  ends = np.cumsum(per_demo)
  biased = np.bincount(ends[demo] - per_demo[demo] + (rng.random(draws) * per_demo[demo]).astype(int),
                       minlength=len(tuples))
  assert chi_square_p_value(biased, expected) < 1e-9


def test_sampler_marginals_on_play_like_lengths():
  """Demo and width marginals match the enumeration's at the published window W_h = 260."""
  lengths, window, draws = (200, 259, 450, 700), 260, 400_000
  demo, _, w = relabel.enumerate_windows(lengths, window)
  sample_demo, sample_t, sample_w = (np.asarray(a) for a in relabel.sample_windows(
      jax.random.key(2), jnp.array(lengths), window, draws))
  assert (sample_t + sample_w <= np.array(lengths)[sample_demo]).all()
  for sampled, exact, size in ((sample_demo, demo, len(lengths)), (sample_w - 1, w - 1, window)):
    expected = np.bincount(exact, minlength=size) / len(exact) * draws
    assert chi_square_p_value(np.bincount(sampled, minlength=size), expected) > 1e-3


def test_sample_low_rows_come_from_inside_the_demos():
  lengths, window = (1, 3, 7, 12, 40), 30
  batch = relabel.sample_low(jax.random.key(3), jax.device_put(encoded_demos(lengths)), window, 4096)
  assert all(x.shape[0] == 4096 and x.dtype == jnp.float32 for x in batch)
  demo, t = decode(batch.observations)
  goal_demo, goal_t = decode(batch.goals)
  np.testing.assert_array_equal(goal_demo, demo)
  assert (1 <= goal_t - t).all() and (goal_t - t <= window).all() and (goal_t <= np.array(lengths)[demo]).all()
  np.testing.assert_array_equal(batch.actions, encoded_demos(lengths).actions[demo, t])
  assert set(zip(demo.tolist(), t.tolist(), (goal_t - t).tolist())) <= set(brute_force(lengths, window))


@pytest.mark.parametrize('window_low, window_high', [(2, 5), (30, 50), (1, 1)])
def test_sample_high_subgoal_is_capped_at_window_low(window_low, window_high):
  lengths = (1, 3, 7, 12, 40)
  batch = relabel.sample_high(jax.random.key(4), jax.device_put(encoded_demos(lengths)), window_low, window_high, 4096)
  demo, t = decode(batch.observations)
  subgoal_demo, subgoal_t = decode(batch.subgoals)
  goal_demo, goal_t = decode(batch.goals)
  np.testing.assert_array_equal(subgoal_demo, demo)
  np.testing.assert_array_equal(goal_demo, demo)
  w = goal_t - t
  assert (1 <= w).all() and (w <= window_high).all() and (goal_t <= np.array(lengths)[demo]).all()
  np.testing.assert_array_equal(subgoal_t - t, np.minimum(w, window_low))
  assert set(zip(demo.tolist(), t.tolist(), w.tolist())) <= set(brute_force(lengths, window_high))


def test_sample_final_goal_is_the_demo_end():
  lengths = (1, 3, 7, 12, 40)
  batch = relabel.sample_final(jax.random.key(5), jax.device_put(encoded_demos(lengths)), 4096)
  demo, t = decode(batch.observations)
  goal_demo, goal_t = decode(batch.goals)
  np.testing.assert_array_equal(goal_demo, demo)
  np.testing.assert_array_equal(goal_t, np.array(lengths)[demo])
  assert set(zip(demo.tolist(), t.tolist())) == {(i, s) for i, n in enumerate(lengths) for s in range(n)}
  np.testing.assert_array_equal(batch.actions, encoded_demos(lengths).actions[demo, t])


def test_samplers_are_pure_functions_of_the_key():
  demos = jax.device_put(encoded_demos(LENGTHS))
  for sample in (lambda k: relabel.sample_low(k, demos, 5, 64), lambda k: relabel.sample_high(k, demos, 2, 5, 64),
                 lambda k: relabel.sample_final(k, demos, 64)):
    first, again, other = sample(jax.random.key(6)), sample(jax.random.key(6)), sample(jax.random.key(7))
    for a, b, c in zip(first, again, other):
      np.testing.assert_array_equal(a, b)
      assert not np.array_equal(a, c)


def test_samplers_compose_under_jit_and_vmap():
  demos = jax.device_put(encoded_demos(LENGTHS))
  keys = jax.random.split(jax.random.key(8), 3)
  batch = jax.jit(jax.vmap(lambda k: relabel.sample_high(k, demos, 2, 5, 16)))(keys)
  assert batch.subgoals.shape == (3, 16, 30)
  np.testing.assert_array_equal(batch.goals[1], relabel.sample_high(keys[1], demos, 2, 5, 16).goals)


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, message', [
    (dict(window_low=0), 'window_low must be >= 1, got 0'),
    (dict(window_low=40, window_high=30), 'window_high=30 < window_low=40'),
    (dict(horizon=0), 'horizon must be >= 1, got 0'),
])
def test_bad_configs_raise(kwargs, message):
  with no_compiles(), pytest.raises(ValueError, match=message):
    relabel.RelabelConfig(**kwargs)


def test_check_windows():
  config = relabel.RelabelConfig(window_low=3, window_high=12)
  relabel.check_windows(config, np.array(LENGTHS, np.int32))  # the longest demo is exactly W_h
  device_lengths = jnp.array(LENGTHS)
  with no_compiles():
    with pytest.raises(ValueError, match=r'window_high=13 \(window_low=3\) .* longest has 12 steps'):
      relabel.check_windows(relabel.RelabelConfig(window_low=3, window_high=13), LENGTHS)
    with pytest.raises(ValueError, match='longest has 12 steps'):
      relabel.check_windows(relabel.RelabelConfig(), device_lengths)
    with pytest.raises(ValueError, match='int32 limit'):
      relabel.check_windows(relabel.RelabelConfig(window_high=50_000), np.full(3, 50_000))
    with pytest.raises(ValueError, match='demo lengths >= 1'):
      relabel.check_windows(config, [12, 0])


def test_bad_sampler_arguments_raise_before_compiling():
  demos, key = jax.device_put(encoded_demos(LENGTHS)), jax.random.key(0)
  with no_compiles():
    with pytest.raises(ValueError, match='window must be >= 1, got 0'):
      relabel.sample_low(key, demos, 0, 8)
    with pytest.raises(ValueError, match='window_low must be >= 1, got 0'):
      relabel.sample_high(key, demos, 0, 5, 8)
    with pytest.raises(ValueError, match='batch_size must be >= 1, got 0'):
      relabel.sample_final(key, demos, 0)
    with pytest.raises(ValueError, match='window must be >= 1, got 0'):
      relabel.enumerate_windows(LENGTHS, 0)


def test_oracle_segments_match_brute_force():
  """Every (demo, t) is drawn, uniformly; the low level's goal and the high level's subgoal are the
  state at the first boundary after t (the demo's end past the last, ties and boundaries at the end
  included); the high level's goal is the demo's last state."""
  lengths = np.array([6, 4], np.int32)
  boundaries = np.array([[2, 4, 5, 5], [1, 1, 3, 4]], np.int32)
  observations = np.zeros((2, 7, 30), np.float32)
  observations[..., 0] = 100 * np.arange(2)[:, None] + np.arange(7)  # state (i, t) reads 100 i + t
  demos = PaddedDemos(observations, np.zeros((2, 6, 9), np.float32), lengths)
  expected = {}
  for i, length in enumerate(lengths):
    for t in range(length):
      later = [b for b in boundaries[i] if b > t]
      expected[100 * i + t] = (100 * i + (min(later) if later else length), 100 * i + length)
  low, high = relabel.sample_segments(jax.random.key(0), relabel.SegmentedDemos(demos, jnp.asarray(boundaries)), 5000)
  drawn = np.asarray(low.observations[:, 0]).astype(int)
  assert set(drawn) == set(expected)
  counts = np.array([np.sum(drawn == k) for k in expected])
  assert counts.min() > 0.7 * 5000 / len(expected)
  for start, low_goal, subgoal, goal in zip(drawn, np.asarray(low.goals[:, 0]), np.asarray(high.subgoals[:, 0]),
                                            np.asarray(high.goals[:, 0])):
    assert (low_goal, goal) == expected[start] and subgoal == low_goal
