"""Relay data relabeling (RPL Algorithms 2 and 3): sampled on the device, and enumerated exactly.

A window tuple `(i, t, w)` of demo i (T_i actions, states s_0..s_{T_i}) has 1 <= w <= W and
t + w <= T_i, so that neither `a_t` nor the goal `s_{t+w}` lies past the demo's end. Algorithm 2 turns
every tuple with W = W_l into a low-level example `(s_t, a_t, goal=s_{t+w})`; Algorithm 3 turns every
tuple with W = W_h into a high-level one `(s_t, subgoal=s_{t+min(w, W_l)}, goal=s_{t+w})`.

Enumerating them all takes O(N*T*W) memory (tens of millions of high-level tuples for 400 play demos),
so the trainer draws minibatches uniformly over all tuples of all demos instead (`sample_*`): one
integer draw per example, mapped to its tuple through cumulative counts, in O(N + B) memory besides
the demos. Call `check_windows` once on the host first: the samplers cannot raise on traced lengths.
The `enumerate_*` functions build every tuple with numpy, for tests and small data.

Tuples are indexed in (demo, w, t) order: demo i owns a contiguous range of `tuple_counts(...)[i]`
indices, inside which width w is the block of its T_i - w + 1 start times.
"""

import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rpl_jax.data.demos import PaddedDemos

# Tuple indices are int32 on the device, and `_tuples_up_to` forms twice a tuple count before halving
# it: this bound keeps both in range.
MAX_TUPLES = 2**30 - 1


@dataclasses.dataclass(frozen=True)
class RelabelConfig:
  window_low: int = 30  # W_l: Algorithm 2's window, and the cap on the high level's subgoal offset
  window_high: int = 260  # W_h: Algorithm 3's window
  horizon: int = 30  # H: env steps between high-level decisions (the rollout's; validated here)

  def __post_init__(self):
    if self.window_low < 1:
      raise ValueError(f'window_low must be >= 1, got {self.window_low}.')
    if self.window_high < self.window_low:
      raise ValueError(f'window_high must be >= window_low, got window_high={self.window_high} '
                       f'< window_low={self.window_low}.')
    if self.horizon < 1:
      raise ValueError(f'horizon must be >= 1, got {self.horizon}.')


class LowBatch(NamedTuple):
  """Algorithm 2's examples (or GCBC's): what the low level imitates."""
  observations: jax.Array  # [B, 30] s_t
  actions: jax.Array  # [B, 9] a_t
  goals: jax.Array  # [B, 30] s_{t+w}


class HighBatch(NamedTuple):
  """Algorithm 3's examples: the high level predicts `subgoals` from observations and goals."""
  observations: jax.Array  # [B, 30] s_t
  subgoals: jax.Array  # [B, 30] s_{t+min(w, W_l)}
  goals: jax.Array  # [B, 30] s_{t+w}


def _tuples_up_to(width, length):
  """Tuples of width <= `width` in a demo of `length` steps (`width` <= `length`): the sum over
  w = 1..width of length - w + 1, which is also where the block of width + 1 starts."""
  # The product is even and non-negative: a shift halves it exactly, at less cost than jnp's `//`.
  return width * (2 * length + 1 - width) >> 1


def tuple_counts(lengths: np.ndarray | jax.Array, window: int) -> np.ndarray | jax.Array:
  """Number of window tuples (t, w) of each demo, [N].

  numpy in, numpy out (pass int64 for host-side totals); jax in, jax out (jittable)."""
  xp = np if isinstance(lengths, np.ndarray) else jnp
  return _tuples_up_to(xp.minimum(lengths, window), lengths)


def check_windows(config: RelabelConfig, lengths: np.ndarray | jax.Array) -> None:
  """Raise ValueError unless the demos with these `lengths` (T per demo) can feed `config`'s samplers:
  some demo at least as long as W_h (and so as W_l), and at most MAX_TUPLES tuples in all. Host-side
  numpy, so it fails before anything compiles."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.ndim != 1 or not len(lengths) or (lengths < 1).any():
    raise ValueError(f'lengths must be a non-empty vector of demo lengths >= 1, got {lengths}.')
  longest = int(lengths.max())
  if config.window_high > longest:
    raise ValueError(f'window_high={config.window_high} (window_low={config.window_low}) is longer than every '
                     f'demo: the longest has {longest} steps.')
  total = int(tuple_counts(lengths, config.window_high).sum())
  if total > MAX_TUPLES:
    raise ValueError(f'{len(lengths)} demos have {total} tuples of window {config.window_high}, more than the '
                     f'samplers\' int32 limit of {MAX_TUPLES}.')


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}.')


def _check_demos(demos: PaddedDemos) -> None:
  num_demos, num_steps = demos.actions.shape[:2]
  chex.assert_shape(demos.observations, (num_demos, num_steps + 1, None))
  chex.assert_shape(demos.lengths, (num_demos,))


def _locate(index, lengths, window: int):
  """(demo, t, w) of global tuple indices `index` (int32, in [0, total)), in the order of the module docstring.

  The width is the largest w <= min(W, T) with `_tuples_up_to(w - 1) <= local index`, found by bisection
  in exact int32 arithmetic (W.bit_length() elementwise steps, unrolled): no float root to round, so no
  draw can land past a demo's end."""
  counts = tuple_counts(lengths, window)
  ends = jnp.cumsum(counts)
  demo = jnp.searchsorted(ends, index, side='right').astype(jnp.int32)
  length = lengths[demo]
  local = index - (ends - counts)[demo]
  low, high = jnp.ones_like(length), jnp.minimum(length, window)
  for _ in range(int(window).bit_length()):
    mid = (low + high + 1) >> 1
    fits = _tuples_up_to(mid - 1, length) <= local
    low, high = jnp.where(fits, mid, low), jnp.where(fits, high, mid - 1)
  return demo, local - _tuples_up_to(low - 1, length), low


@functools.partial(jax.jit, static_argnames=('window', 'batch_size'))
def sample_windows(key: jax.Array, lengths: jax.Array, window: int,
                   batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(demo, t, w), int32 [batch_size] each, drawn uniformly over the window tuples of all demos together
  (so demo i with probability tuple_counts_i / total). `window` and `batch_size` are static."""
  _check_positive(window=window, batch_size=batch_size)
  lengths = jnp.asarray(lengths, jnp.int32)
  total = jnp.sum(tuple_counts(lengths, window))
  return _locate(jax.random.randint(key, (batch_size,), 0, total), lengths, window)


@functools.partial(jax.jit, static_argnames=('window', 'batch_size'))
def sample_low(key: jax.Array, demos: PaddedDemos, window: int, batch_size: int) -> LowBatch:
  """Algorithm 2: `batch_size` uniform draws of (s_t, a_t, s_{t+w}), w <= window."""
  _check_demos(demos)
  demo, t, w = sample_windows(key, demos.lengths, window, batch_size)
  return LowBatch(demos.observations[demo, t], demos.actions[demo, t], demos.observations[demo, t + w])


@functools.partial(jax.jit, static_argnames=('window_low', 'window_high', 'batch_size'))
def sample_high(key: jax.Array, demos: PaddedDemos, window_low: int, window_high: int, batch_size: int) -> HighBatch:
  """Algorithm 3: `batch_size` uniform draws of (s_t, s_{t+min(w, W_l)}, s_{t+w}), w <= window_high."""
  _check_positive(window_low=window_low, window_high=window_high)
  _check_demos(demos)
  demo, t, w = sample_windows(key, demos.lengths, window_high, batch_size)
  observations = demos.observations
  return HighBatch(observations[demo, t], observations[demo, t + jnp.minimum(w, window_low)],
                   observations[demo, t + w])


@functools.partial(jax.jit, static_argnames=('batch_size',))
def sample_final(key: jax.Array, demos: PaddedDemos, batch_size: int) -> LowBatch:
  """GCBC without relabeling: (s_t, a_t, s_{T_i}), t uniform over every step of every demo."""
  _check_demos(demos)
  demo, t, _ = sample_windows(key, demos.lengths, 1, batch_size)  # width-1 tuples: one per (i, t < T_i)
  observations = demos.observations
  return LowBatch(observations[demo, t], demos.actions[demo, t], observations[demo, demos.lengths[demo]])


class SegmentedDemos(NamedTuple):
  """Demos with oracle segment boundaries, for the oracle-segmentation baseline only: per demo, the
  state indices at which each element of its play was first complete (the generator's metadata)."""
  demos: PaddedDemos
  boundaries: jax.Array  # int32 [N, K]

  @property
  def lengths(self) -> jax.Array:
    return self.demos.lengths


@functools.partial(jax.jit, static_argnames=('batch_size',))
def sample_segments(key: jax.Array, data: SegmentedDemos, batch_size: int) -> tuple[LowBatch, HighBatch]:
  """Oracle segmentation: t uniform over every step of every demo, and `end`, the first boundary
  after t (the demo's last state past the last boundary). Returns the low level's (s_t, a_t, s_end)
  and the high level's (s_t, subgoal s_end, goal s_T)."""
  demos = data.demos
  _check_demos(demos)
  demo, t, _ = sample_windows(key, demos.lengths, 1, batch_size)
  length, boundaries = demos.lengths[demo], data.boundaries[demo]
  end = jnp.min(jnp.where(boundaries > t[:, None], jnp.minimum(boundaries, length[:, None]), length[:, None]), axis=-1)
  observations = demos.observations
  return (LowBatch(observations[demo, t], demos.actions[demo, t], observations[demo, end]),
          HighBatch(observations[demo, t], observations[demo, end], observations[demo, length]))


def enumerate_windows(lengths: np.ndarray | jax.Array, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every window tuple as int64 arrays (demo, t, w), in the order of the module docstring."""
  _check_positive(window=window)
  lengths = np.asarray(lengths, np.int64)
  demo, w = np.nonzero(np.arange(1, window + 1) <= lengths[:, None])  # (demo, w) blocks, in order
  w = w + 1
  sizes = lengths[demo] - w + 1
  starts = np.cumsum(sizes) - sizes
  return np.repeat(demo, sizes), np.arange(sizes.sum()) - np.repeat(starts, sizes), np.repeat(w, sizes)


def enumerate_low(demos: PaddedDemos, window: int) -> LowBatch:
  """Algorithm 2, exactly: every (s_t, a_t, s_{t+w}) as numpy arrays."""
  _check_demos(demos)
  observations = np.asarray(demos.observations)
  demo, t, w = enumerate_windows(demos.lengths, window)
  return LowBatch(observations[demo, t], np.asarray(demos.actions)[demo, t], observations[demo, t + w])


def enumerate_high(demos: PaddedDemos, window_low: int, window_high: int) -> HighBatch:
  """Algorithm 3, exactly: every (s_t, s_{t+min(w, W_l)}, s_{t+w}) as numpy arrays."""
  _check_positive(window_low=window_low)
  _check_demos(demos)
  observations = np.asarray(demos.observations)
  demo, t, w = enumerate_windows(demos.lengths, window_high)
  return HighBatch(observations[demo, t], observations[demo, t + np.minimum(w, window_low)],
                   observations[demo, t + w])
