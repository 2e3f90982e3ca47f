"""Play demonstrations: the scripted expert's batched rollouts of four-element plans, cut into demos,
checked by replay, and the statistics of a generation run.

A candidate demo is a (seed, plan) pair. Its int seed gives the env's reset key and the expert's key
(`demo_keys`), so a demo replays from its seed, its plan's goal, its actions and the env config it was
recorded with. Candidate j of shard i of a run with seed s is drawn from (s, i, j) alone
(`candidates`), so a shard's content does not depend on what other shards did: a resumed run writes
the shards it would have written uninterrupted. That takes the same PlayConfig, batch size included:
XLA rounds the batched expert differently for another batch shape (1e-6 in an action), and the
closed loop grows that into another trajectory within a few dozen steps.

A rollout runs `max_steps + extra_steps` control steps. It becomes a demo if all four plan elements
are complete together (in the true state) within `max_steps` steps; the demo ends `extra_steps` steps
after that, and all four must still be complete there. Anything else is rejected with a reason
(`REASONS`), as is a demo whose actions, replayed from its reset key, do not complete all four
elements again (`replay`). experiments/generate_demos.py drives this shard by shard.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import ACTION_DIM, tasks
from rpl_jax.data.demos import Demo

PLAN_LENGTH = 4
# Outcome of a candidate: accepted, or the first reason it was rejected.
REASONS = ('accepted', 'nonfinite', 'incomplete', 'undone', 'replay')
ACCEPTED, NONFINITE, INCOMPLETE, UNDONE, REPLAY = range(len(REASONS))
REASON_HELP = {
    'nonfinite': 'non-finite physics state or expert action before the end of the demo',
    'incomplete': f'the {PLAN_LENGTH} plan elements were never complete together within max_steps',
    'undone': 'an element was undone during the extra steps after completion',
    'replay': 'replaying the actions from the reset key did not complete all elements',
}


@dataclasses.dataclass(frozen=True)
class PlayConfig:
  orderings: tuple[str, ...] = tasks.ALL_ORDERINGS  # plans are drawn uniformly from these
  max_steps: int = 800  # control steps to complete all four elements (the expert takes ~400-800)
  extra_steps: int = 5  # kept after the step that completes the fourth element
  batch_size: int = 64  # candidates rolled out together
  # Std of Gaussian noise added to the expert's actions before they are executed (and stored): the
  # closed-loop expert corrects it, so demos show recoveries from off-path states (as in DART).
  action_noise: float = 0.0
  # The noise is an AR(1) process with this coefficient (0: white), stationary std action_noise. The
  # stored actions include it (a replay needs the executed actions), so correlated noise is partly
  # predictable from the states, and a policy imitating them can learn some of the drift.
  noise_correlation: float = 0.0
  # Noise only while the expert moves in joint space between elements (Expert.in_transit), so grasps
  # and pushes stay clean.
  noise_in_transit_only: bool = False

  def __post_init__(self):
    if self.max_steps < 1 or self.extra_steps < 0 or self.batch_size < 1 or not self.action_noise >= 0:
      raise ValueError(f'need max_steps >= 1, extra_steps >= 0, batch_size >= 1 and action_noise >= 0, got '
                       f'{self.max_steps}, {self.extra_steps}, {self.batch_size} and {self.action_noise}.')
    if not 0 <= self.noise_correlation < 1:
      raise ValueError(f'noise_correlation must be in [0, 1), got {self.noise_correlation}.')
    parse_orderings(self.orderings)

  @property
  def num_steps(self) -> int:
    """Length of a rollout."""
    return self.max_steps + self.extra_steps


# --- plans ----------------------------------------------------------------------------------------


def parse_orderings(orderings: Sequence[str]) -> np.ndarray:
  """int32 [N, 4]: element indices (into tasks.ELEMENTS) of orderings like 'microwave-kettle-topknob-hinge'."""
  if isinstance(orderings, str) or not orderings:
    raise ValueError(f'orderings must be a non-empty sequence of strings, got {orderings!r}.')
  plans = []
  for ordering in orderings:
    elements = tasks.parse_elements(ordering)  # raises on unknown or repeated elements
    if len(elements) != PLAN_LENGTH:
      raise ValueError(f'ordering {ordering!r} has {len(elements)} elements; play demos need exactly {PLAN_LENGTH}.')
    plans.append([tasks.ELEMENTS.index(e) for e in elements])
  return np.array(plans, np.int32)


def element_names(plan: Sequence[int]) -> list[str]:
  return [tasks.ELEMENTS[i] for i in plan]


def goal_states(plans: np.ndarray) -> np.ndarray:
  """float32 [B, 30]: the goal of each plan (the reset state with its elements at their goal values)."""
  return np.stack([tasks.goal_state(element_names(p)) for p in plans]).astype(np.float32)


def candidates(seed: int, shard: int, start: int, count: int, plans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Candidates start..start+count-1 of a shard: int32 seeds [count] and plans [count, 4], each drawn
  uniformly from `plans` ([N, 4]) by a generator seeded with (seed, shard, candidate index)."""
  rngs = [np.random.default_rng([seed, shard, j]) for j in range(start, start + count)]
  seeds = np.array([rng.integers(2**31) for rng in rngs], np.int32)
  return seeds, plans[[rng.integers(len(plans)) for rng in rngs]]


def demo_keys(seed: jax.Array) -> jax.Array:
  """[2] keys of one demo from its int seed: the env's reset key, then the expert's key."""
  return jax.random.split(jax.random.key(seed))


# --- rollout, cut and replay ----------------------------------------------------------------------


class Rollout(NamedTuple):
  observations: jax.Array  # [B, S+1, 30] the env's (noisy) observations, the reset one first
  actions: jax.Array  # [B, S, 9]
  completion: jax.Array  # bool [B, S+1, 4]: each plan element complete in the true state, in plan order
  nonfinite: jax.Array  # bool [B, S]: this step's physics diverged or its action was not finite


def rollout(env, expert, seeds: jax.Array, plans: jax.Array, goals: jax.Array, num_steps: int,
            action_noise: float = 0.0, noise_correlation: float = 0.0, noise_in_transit_only: bool = False) -> Rollout:
  """The expert playing each plan for `num_steps` steps from its seed's reset key, its actions
  perturbed by Gaussian noise (PlayConfig's action_noise, noise_correlation, noise_in_transit_only) and
  clipped to [-1, 1]. Pure: jit it with env, expert, num_steps and the noise settings bound
  (functools.partial)."""
  innovation = action_noise * (1.0 - noise_correlation**2) ** 0.5

  def one(seed, plan, goal):
    reset_key, expert_key = demo_keys(seed)
    state = env.reset(reset_key, goal)
    noise_keys = jax.random.split(jax.random.fold_in(expert_key, 1), num_steps)

    def step(carry, noise_key):
      state, expert_state, noise = carry
      noisy = expert.in_transit(expert_state) if noise_in_transit_only else True  # the phase acting now
      action, expert_state = expert.act(expert_state, state.data.qpos)
      if action_noise:
        noise = noise_correlation * noise + innovation * jax.random.normal(noise_key, action.shape)
        action = jnp.clip(action + jnp.where(noisy, noise, 0.0), -1.0, 1.0)
      state = env.step(state, action)
      nonfinite = (state.metrics['nan_physics'] > 0) | (state.metrics['nonfinite_actions'] > 0)
      return (state, expert_state, noise), (state.obs, action, _plan_completion(state, plan), nonfinite)

    first_noise = action_noise * jax.random.normal(jax.random.fold_in(expert_key, 2), (ACTION_DIM,))
    carry = (state, expert.init(expert_key, plan), first_noise)
    observations, actions, completion, nonfinite = jax.lax.scan(step, carry, noise_keys)[1]
    return Rollout(jnp.concatenate([state.obs[None], observations]), actions,
                   jnp.concatenate([_plan_completion(state, plan)[None], completion]), nonfinite)

  return jax.vmap(one)(seeds, plans, goals)


def _plan_completion(state, plan: jax.Array) -> jax.Array:
  return tasks.element_completion(state.data.qpos)[plan]


def _all_complete_within(completion: np.ndarray, max_steps: int) -> np.ndarray:
  """bool [B, max_steps+1]: all plan elements complete at each state up to step max_steps."""
  return completion[:, :max_steps + 1].all(axis=-1)


def cut(completion: np.ndarray, nonfinite: np.ndarray, max_steps: int,
        extra_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Demo lengths T (int32 [B]) and outcomes (int [B], indices into REASONS) of rollouts with
  `completion` bool [B, S+1, 4] and `nonfinite` bool [B, S], S >= max_steps + extra_steps.

  T is `extra_steps` past the first state with all four elements complete (at least 1); a rollout
  that never gets there within max_steps keeps T = max_steps and is rejected as incomplete."""
  completion, nonfinite = np.asarray(completion, bool), np.asarray(nonfinite, bool)
  num_steps = nonfinite.shape[1]
  if completion.ndim != 3 or completion.shape[:2] != (len(nonfinite), num_steps + 1):
    raise ValueError(f'completion must be [B, S+1, 4] for nonfinite [B, S] = {nonfinite.shape}, '
                     f'got {completion.shape}.')
  if num_steps < max_steps + extra_steps:
    raise ValueError(f'rollouts of {num_steps} steps are shorter than max_steps + extra_steps = '
                     f'{max_steps + extra_steps}.')
  done = _all_complete_within(completion, max_steps)
  reached = done.any(axis=1)
  lengths = np.where(reached, np.maximum(done.argmax(axis=1) + extra_steps, 1), max_steps).astype(np.int32)
  diverged = (nonfinite & (np.arange(num_steps) < lengths[:, None])).any(axis=1)
  complete_at_end = completion[np.arange(len(lengths)), lengths].all(axis=-1)
  outcomes = np.select([diverged, ~reached, ~complete_at_end], [NONFINITE, INCOMPLETE, UNDONE], ACCEPTED)
  return lengths, outcomes


def element_steps(completion: np.ndarray) -> np.ndarray:
  """int32 [B, 4]: per rollout (completion bool [B, S+1, 4], plan order), the first state index at
  which each plan element is complete (S + 1 if never)."""
  completion = np.asarray(completion, bool)
  return np.where(completion.any(axis=1), completion.argmax(axis=1), completion.shape[1]).astype(np.int32)


def replay(env, seeds: jax.Array, goals: jax.Array, actions: jax.Array, lengths: jax.Array) -> jax.Array:
  """bool [B]: replaying `actions` ([B, T_max, 9], padded past `lengths`) from each seed's reset key
  ends, after lengths[i] steps, with every goal element complete in the true state and no non-finite
  physics on the way. Pure: jit it with env bound."""
  def one(seed, goal, actions, length):
    state = env.reset(demo_keys(seed)[0], goal)

    def step(carry, inputs):
      state, complete, finite = carry
      t, action = inputs
      state = env.step(state, action)
      finite &= (t >= length) | (state.metrics['nan_physics'] == 0)
      now = tasks.all_complete(tasks.element_completion(state.data.qpos), state.info['goal_mask'])
      return (state, jnp.where(t + 1 == length, now, complete), finite), None

    carry = (state, jnp.zeros((), bool), jnp.ones((), bool))
    _, complete, finite = jax.lax.scan(step, carry, (jnp.arange(actions.shape[0]), actions))[0]
    return complete & finite

  return jax.vmap(one)(seeds, goals, actions, lengths)


# --- batches and statistics -----------------------------------------------------------------------


class Batch(NamedTuple):
  """One batch of candidates, cut and checked. Arrays are numpy, one row per candidate."""
  seeds: np.ndarray  # int32 [B]
  plans: np.ndarray  # int32 [B, 4]
  lengths: np.ndarray  # int32 [B]
  outcomes: np.ndarray  # int [B], indices into REASONS
  completion: np.ndarray  # bool [B, S+1, 4]
  observations: np.ndarray  # float32 [B, S+1, 30]
  actions: np.ndarray  # float32 [B, S, 9]

  def demo(self, i: int) -> Demo:
    t = self.lengths[i]
    return Demo(self.observations[i, :t + 1], self.actions[i, :t])


class Player:
  """The jitted rollout and replay for one env, expert and PlayConfig."""

  def __init__(self, env, expert, config: PlayConfig = PlayConfig()):
    if env.observation_size != tasks.NQ:
      raise ValueError(f'demos store the {tasks.NQ}-d qpos observation; build the env with obs_velocities=False.')
    self.config = config
    self.plans = parse_orderings(config.orderings)
    self._rollout = jax.jit(functools.partial(rollout, env, expert, num_steps=config.num_steps,
                                              action_noise=config.action_noise,
                                              noise_correlation=config.noise_correlation,
                                              noise_in_transit_only=config.noise_in_transit_only))
    self._replay = jax.jit(functools.partial(replay, env))

  def play(self, seeds: np.ndarray, plans: np.ndarray) -> Batch:
    """Roll out, cut and replay-check a batch of candidates (seeds int32 [B], plans int32 [B, 4])."""
    goals = goal_states(plans)
    r = jax.device_get(self._rollout(seeds, plans, goals))
    lengths, outcomes = cut(r.completion, r.nonfinite, self.config.max_steps, self.config.extra_steps)
    replayed = np.asarray(self._replay(seeds, goals, r.actions, lengths))
    outcomes = np.where((outcomes == ACCEPTED) & ~replayed, REPLAY, outcomes)
    return Batch(seeds, plans, lengths, outcomes, r.completion, r.observations, r.actions)

  def replay(self, seeds: np.ndarray, plans: np.ndarray, actions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """bool [B]: the replay check of demos given as padded actions (e.g. demos.pad_demos) and lengths."""
    return np.asarray(self._replay(seeds, goal_states(plans), actions, lengths))


@dataclasses.dataclass
class PlayStats:
  """Counts over every candidate rolled out in a run (see `summary`)."""
  max_steps: int
  rollouts: int = 0
  reached: int = 0  # all four elements complete together within max_steps, before any check
  outcomes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(REASONS), np.int64))
  attempts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(tasks.ELEMENTS), np.int64))
  successes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(tasks.ELEMENTS), np.int64))
  kept_lengths: list[int] = dataclasses.field(default_factory=list)
  surplus: int = 0  # accepted, but the shard was already full

  def add(self, batch: Batch, kept: int) -> None:
    """Count a batch of which the first `kept` accepted demos went into the dataset."""
    self.rollouts += len(batch.seeds)
    self.reached += int(_all_complete_within(batch.completion, self.max_steps).any(axis=1).sum())
    self.outcomes += np.bincount(batch.outcomes, minlength=len(REASONS))
    attempted, succeeded = element_attempts(batch.completion, self.max_steps)
    np.add.at(self.attempts, batch.plans, attempted)
    np.add.at(self.successes, batch.plans, succeeded)
    accepted = np.flatnonzero(batch.outcomes == ACCEPTED)
    self.kept_lengths += batch.lengths[accepted[:kept]].tolist()
    self.surplus += max(len(accepted) - kept, 0)

  @property
  def rejected(self) -> int:
    return int(self.outcomes[ACCEPTED + 1:].sum())

  def summary(self) -> dict:
    lengths = np.array(self.kept_lengths)
    return {
        'rollouts': self.rollouts,
        'accepted': len(lengths),
        'surplus_accepted': self.surplus,  # beyond what their shard needed: not saved
        'four_element_success_rate': self.reached / max(self.rollouts, 1),
        'rejected': self.rejected,
        'rejections': {REASONS[i]: int(self.outcomes[i]) for i in range(ACCEPTED + 1, len(REASONS))},
        'rejection_reasons': REASON_HELP,
        'elements': {e: {'attempts': int(a), 'successes': int(s), 'success_rate': int(s) / int(a) if a else None}
                     for e, a, s in zip(tasks.ELEMENTS, self.attempts, self.successes)},
        'demo_length': ({'min': int(lengths.min()), 'mean': float(lengths.mean()), 'max': int(lengths.max())}
                        if len(lengths) else None),
    }


def element_attempts(completion: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """bool [B, 4] each: the expert got to each plan element (all earlier ones were completed within
  max_steps) and the element was completed within max_steps once attempted."""
  ever = completion[:, :max_steps + 1].any(axis=1)
  attempted = np.concatenate([np.ones_like(ever[:, :1]), np.cumprod(ever[:, :-1], axis=1).astype(bool)], axis=1)
  return attempted, attempted & ever


class TooManyRollouts(RuntimeError):
  """The rollout budget ran out before enough demos were accepted."""


def play_shard(player: Player, seed: int, shard: int, num_demos: int, stats: PlayStats, max_rollouts: int,
               on_batch: Callable[[], None] = lambda: None) -> Batch:
  """Candidates of shard `shard`, batch after batch (of the config's batch_size), until `num_demos`
  are accepted; returns the accepted ones (in candidate order) as one Batch. Raises TooManyRollouts
  once `stats.rollouts` reaches `max_rollouts`. `on_batch` is called after each batch (progress)."""
  kept, count, start = [], 0, 0
  while count < num_demos:
    if stats.rollouts >= max_rollouts:
      raise TooManyRollouts(f'gave up after {stats.rollouts} rollouts ({stats.outcomes[ACCEPTED]} accepted); '
                            f'rejections: {stats.summary()["rejections"]}.')
    batch = player.play(*candidates(seed, shard, start, player.config.batch_size, player.plans))
    start += player.config.batch_size
    stats.add(batch, num_demos - count)
    accepted = np.flatnonzero(batch.outcomes == ACCEPTED)[:num_demos - count]
    kept.append(Batch(*(x[accepted] for x in batch)))
    count += len(accepted)
    on_batch()
  return Batch(*(np.concatenate(xs) for xs in zip(*kept)))
