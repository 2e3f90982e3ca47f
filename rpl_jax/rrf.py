"""Relay reinforcement fine-tuning (RRF): one compiled NPG iteration of the hierarchical agent.

An iteration (`make_rrf_step`) runs `num_envs` episodes of the stochastic agent toward one goal,
rewards each fine-tuned level, estimates advantages by GAE against a fitted value baseline, takes an
NPG step per level (rpl_jax.npg; the levels are optimised separately, as in the paper), refits the
baselines and reports metrics, all in one pure function with no host round-trip. With
`monitor_episodes`, it also runs that many episodes of the agent's mean actions from fixed resets
and reports them under 'deterministic/' (the agent that evaluation scores); with `keep_best`, the
state also keeps the parameters that scored best on them (`Best`, `tuned_params`). vmap it over goals
(`jit_rrf_step(per_goal=True)`) to fine-tune every compound goal at once, each with its own
parameters, value nets, buffers and keys.

Variants (DESIGN.md section 1):
  npg   NPG-RPL, the policy gradient alone;
  dapg  DAPG-RPL, plus lambda0 * lambda1^k times the gradient of the mean log-likelihood of tuples
        drawn from the relabeled demo pools D_l (Algorithm 2) and D_h (Algorithm 3);
  iril  IRIL-RPL, DAPG-RPL whose pools also hold this run's rollouts, relabeled the same way: each
        iteration writes its episodes into a fixed-capacity ring buffer on the device, and the BC
        term averages over demos and buffer tuples alike.

Rewards. The high level's is the env's, progress on the compound goal (goal elements completed for
the first time). The low level's compares the state after each step with the subgoal it acted on:
  sparse       1 when every element is within tasks.THRESHOLD of its subgoal coordinates and the
               robot joints within `reach_threshold` (L2) of the subgoal's, else 0 (the default);
  euclidean    minus the L2 distance of the 30-d states;
  elementwise  the fraction of the 7 elements within tasks.THRESHOLD of the subgoal.
Episodes run the fixed `episode_steps` (success is sticky, so later high-level rewards are 0); the
low level's episodes are its subgoal segments of H steps, which bootstrap from the value of the
state after them under the same subgoal (npg.gae's `ends`).

Flat baselines (`pretrain='gcbc'` or `'gcbc_final'`, the paper's GCBC / BC + fine-tuning and, with
dapg, DAPG-GCBC / DAPG-BC): the agent has one level acting on the goal itself; it is rewarded by
the env (goal progress) over whole episodes, and its BC term draws the tuples it was pre-trained on
(train.samplers).
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from envs.kitchen import ACTION_DIM, tasks
from rpl_jax import networks, npg, parallel, relabel, train
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.relabel import RelabelConfig
from rpl_jax.rollout import Agent, Trajectory, agent_rollout, episode_metrics, hierarchical_rollout

VARIANTS = ('npg', 'dapg', 'iril')
LOW_REWARDS = ('sparse', 'euclidean', 'elementwise')
MONITOR_SEED = 0  # the monitor's resets (monitor_episodes)
OUTCOMES = ('success', 'step_completion')  # the episode results logged per goal, sampled and monitored
CURVES = OUTCOMES + tuple(f'deterministic/{name}' for name in OUTCOMES)  # their metric names
BEST = ('best/iteration', 'best/success')  # keep_best: which parameters are kept, and their monitored success


@dataclasses.dataclass(frozen=True)
class RRFConfig:
  variant: str = 'dapg'  # one of VARIANTS
  pretrain: str = 'ril'  # the agent's imitation method (train.METHODS): hierarchical ril or oracle, or flat
  num_envs: int = 64  # episodes per iteration (per goal)
  episode_steps: int = 280
  low_reward: str = 'sparse'  # one of LOW_REWARDS
  reach_threshold: float = 0.3  # sparse reward: robot-joint L2 distance to the subgoal (rad)
  finetune_high: bool = False  # the paper fine-tunes the low level only
  finetune_low: bool = True
  from_scratch: tuple[str, ...] = ()  # fine-tuned levels re-initialised: ('high',) pre-train-low-only, both HIRO
  # The fine-tuned levels' log_std (normalized output space) at the start of RRF, i.e. the exploration
  # noise; None keeps the imitation's. NPG goes on adapting it.
  exploration_log_std: float | None = None
  update: npg.NPGConfig = npg.NPGConfig()  # the natural-gradient step of each level
  gamma: float = 0.995
  gae_lambda: float = 0.97
  value_hidden: tuple[int, ...] = (128, 128)
  value_learning_rate: float = 1e-3
  value_epochs: int = 2
  value_batch_size: int = 64
  relabel: RelabelConfig = RelabelConfig()  # windows of the BC pools; its horizon is the agent's H
  dapg_lambda0: float = 1e-2
  dapg_lambda1: float = 0.95
  bc_batch_size: int = 256  # tuples per level per BC gradient (from demos, and from the buffer for iril)
  buffer_episodes: int = 256  # IRIL ring-buffer capacity, in episodes
  # Mean-action episodes per iteration (per goal), reported as deterministic/* (monitor_metrics); 0: none
  monitor_episodes: int = 0
  # Keep, besides the latest, the parameters with the best monitored success (then step completion);
  # they become the fine-tuned agent (tuned_params). Needs monitor_episodes.
  keep_best: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'value_hidden', tuple(self.value_hidden))
    if self.variant not in VARIANTS:
      raise ValueError(f'unknown RRF variant {self.variant!r}; choose from {VARIANTS}.')
    if self.pretrain not in train.METHODS:
      raise ValueError(f'unknown pre-training method {self.pretrain!r}; choose from {train.METHODS}.')
    object.__setattr__(self, 'from_scratch', tuple(self.from_scratch))
    if self.variant == 'iril' and self.pretrain == 'oracle':
      raise ValueError("IRIL relabels its rollouts, which have no oracle segments: use variant 'npg' or 'dapg'.")
    if self.finetune_high and self.pretrain not in train.HIERARCHICAL:
      raise ValueError(f'finetune_high needs a hierarchical agent; pretrain={self.pretrain!r} is flat.')
    if not self.levels:
      raise ValueError('nothing to fine-tune: finetune_low and finetune_high are both off.')
    if not set(self.from_scratch) <= set(self.levels):
      raise ValueError(f'from_scratch={self.from_scratch} names levels that are not fine-tuned ({self.levels}).')
    if self.exploration_log_std is not None and not math.isfinite(self.exploration_log_std):
      raise ValueError(f'exploration_log_std must be finite or None, got {self.exploration_log_std}.')
    if self.low_reward not in LOW_REWARDS:
      raise ValueError(f'unknown low-level reward {self.low_reward!r}; choose from {LOW_REWARDS}.')
    for name in ('num_envs', 'episode_steps', 'value_epochs', 'value_batch_size', 'bc_batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    check_monitor(self.monitor_episodes, self.keep_best)
    if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
      raise ValueError(f'need gamma in (0, 1] and gae_lambda in [0, 1], got {self.gamma} and {self.gae_lambda}.')
    if not (self.reach_threshold > 0 and self.value_learning_rate > 0 and self.dapg_lambda0 >= 0
            and 0 <= self.dapg_lambda1 <= 1):
      raise ValueError('need reach_threshold > 0, value_learning_rate > 0, dapg_lambda0 >= 0 and dapg_lambda1 in '
                       f'[0, 1], got {self.reach_threshold}, {self.value_learning_rate}, {self.dapg_lambda0} and '
                       f'{self.dapg_lambda1}.')
    if self.variant == 'iril' and self.buffer_episodes < self.num_envs:
      raise ValueError(f'the IRIL buffer must hold one iteration: buffer_episodes={self.buffer_episodes} < '
                       f'num_envs={self.num_envs}.')
    samples = {'low': self.num_envs * self.episode_steps,  # the high level's: one per decision, every H steps
               'high': self.num_envs * -(-self.episode_steps // self.relabel.horizon)}
    for level in self.levels:
      if self.value_batch_size > samples[level]:
        raise ValueError(f'value_batch_size={self.value_batch_size} exceeds the {samples[level]} {level}-level '
                         'samples of an iteration.')

  @property
  def levels(self) -> tuple[str, ...]:
    """The fine-tuned levels."""
    return tuple(level for level, on in (('low', self.finetune_low), ('high', self.finetune_high)) if on)

  @property
  def uses_demos(self) -> bool:
    return self.variant != 'npg'


@struct.dataclass
class RingBuffer:
  """IRIL's rollouts in the demos' padded layout: unfilled episodes have length 0, so the relabeling
  samplers never draw them."""
  episodes: PaddedDemos  # [C, T + 1, 30] observations, [C, T, 9] actions, [C] lengths
  cursor: jax.Array  # int32: the next episode slot to write


@struct.dataclass
class Best:
  """keep_best: of the parameters the monitor has scored (those each iteration started from: the
  pre-trained ones, then after 1, 2, ... updates), the ones with the highest deterministic success,
  then step completion; a tie keeps the earlier."""
  params: dict[str, Any]  # the whole agent's, as RRFState.params
  success: jax.Array  # their monitored success and step completion; -1 before the first iteration
  step_completion: jax.Array
  iteration: jax.Array  # int32: the updates they had had (0: the pre-trained parameters)


def init_best(params: dict[str, Any]) -> Best:
  """Best before any monitor: the first iteration's parameters replace it whatever they score."""
  unscored = lambda: -jnp.ones((), jnp.float32)  # a buffer each: the compiled step donates the state
  return Best(jax.tree.map(jnp.copy, params), unscored(), unscored(), jnp.zeros((), jnp.int32))


def update_best(best: Best | None, params: dict[str, Any], metrics: dict[str, jax.Array],
                iteration: jax.Array) -> tuple[Best | None, dict[str, jax.Array]]:
  """(`best`, or `params` (after `iteration` updates) if the monitor `metrics` score them higher; the
  BEST metrics). Without keep_best (`best` None): (None, {})."""
  if best is None:
    return None, {}
  success, completion = metrics['deterministic/success'], metrics['deterministic/step_completion']
  better = (success > best.success) | ((success == best.success) & (completion > best.step_completion))
  pick = lambda new, old: jnp.where(better, new, old)
  best = Best(jax.tree.map(pick, params, best.params), pick(success, best.success),
              pick(completion, best.step_completion), pick(iteration, best.iteration))
  return best, dict(zip(BEST, (best.iteration, best.success)))


def tuned_params(state) -> dict[str, Any]:
  """The fine-tuned agent's parameters of an RRF or AW-Opt state: the best monitored (keep_best) or
  the latest."""
  return state.params if state.best is None else state.best.params


@struct.dataclass
class RRFState:
  params: dict[str, Any]  # per agent level; only config.levels change
  normalizers: dict[str, networks.PolicyNormalizer]  # per agent level, from RIL; fixed
  values: dict[str, Any]  # value-net params per fine-tuned level
  value_opt_state: dict[str, Any]
  buffer: RingBuffer | None  # IRIL only
  key: jax.Array
  iteration: jax.Array  # int32: iterations done (k of the DAPG weight)
  skipped: jax.Array  # int32: NPG steps skipped so far (bad curvature or KL), over the levels
  best: Best | None  # keep_best only


def dapg_weight(config: RRFConfig, iteration: jax.Array) -> jax.Array:
  """lambda0 * lambda1^k, the BC term's weight at iteration k; 0 for NPG-RPL."""
  if not config.uses_demos:
    return jnp.zeros((), jnp.float32)
  return config.dapg_lambda0 * jnp.asarray(config.dapg_lambda1, jnp.float32)**iteration


def low_reward(kind: str, state: jax.Array, subgoal: jax.Array, reach_threshold: float = 0.3) -> jax.Array:
  """The low level's reward [...] for reaching `subgoal` ([..., 30]) in `state` ([..., 30]); see the
  module docstring for the kinds."""
  gaps = tasks.element_distances(state, subgoal)
  within = gaps < tasks.THRESHOLD
  if kind == 'sparse':
    robot = jnp.linalg.norm(state[..., :tasks.ROBOT_DOF] - subgoal[..., :tasks.ROBOT_DOF], axis=-1)
    return (jnp.all(within, axis=-1) & (robot < reach_threshold)).astype(jnp.float32)
  if kind == 'euclidean':
    return -jnp.linalg.norm(state - subgoal, axis=-1)
  if kind == 'elementwise':
    return jnp.mean(within.astype(jnp.float32), axis=-1)
  raise ValueError(f'unknown low-level reward {kind!r}; choose from {LOW_REWARDS}.')


def empty_buffer(config: RRFConfig) -> RingBuffer:
  capacity, steps = config.buffer_episodes, config.episode_steps
  episodes = PaddedDemos(jnp.zeros((capacity, steps + 1, tasks.NQ), jnp.float32),
                         jnp.zeros((capacity, steps, ACTION_DIM), jnp.float32), jnp.zeros((capacity,), jnp.int32))
  return RingBuffer(episodes, jnp.zeros((), jnp.int32))


def buffer_add(buffer: RingBuffer, observations: jax.Array, actions: jax.Array) -> RingBuffer:
  """Writes N episodes ([N, T + 1, 30] and [N, T, 9]) at the cursor, overwriting the oldest once full."""
  capacity = buffer.episodes.lengths.shape[0]
  slots = (buffer.cursor + jnp.arange(observations.shape[0])) % capacity
  episodes = PaddedDemos(buffer.episodes.observations.at[slots].set(observations),
                         buffer.episodes.actions.at[slots].set(actions),
                         buffer.episodes.lengths.at[slots].set(actions.shape[1]))
  return RingBuffer(episodes, (buffer.cursor + observations.shape[0]) % capacity)


def make_value(config: RRFConfig) -> networks.ValueNetwork:
  return networks.make_value(tasks.NQ, tasks.NQ, config.value_hidden)


def init_state(agent: Agent, config: RRFConfig, params: dict[str, Any],
               normalizers: dict[str, networks.PolicyNormalizer], key: jax.Array) -> RRFState:
  """The fine-tuning state from pre-trained (RIL) `params` and `normalizers`: fresh value nets per
  fine-tuned level, fresh policy parameters for the `from_scratch` levels (the normalizers stay the
  demos'), the fine-tuned levels' log_std at `exploration_log_std` if set, for IRIL an empty
  buffer and, with keep_best, an unscored Best. vmap it over keys for per-goal states. The state
  holds copies, so donating it to the compiled step leaves the caller's arrays alive."""
  check_agent(agent, config)
  value_net, optimizer = make_value(config), optax.adam(config.value_learning_rate)
  key, *value_keys = jax.random.split(key, 1 + len(config.levels))
  values = {level: value_net.init(k) for level, k in zip(config.levels, value_keys)}
  params, normalizers = jax.tree.map(jnp.copy, (params, normalizers))
  if config.from_scratch:
    key, *scratch_keys = jax.random.split(key, 1 + len(config.from_scratch))
    params.update({level: agent.by_level[level].init(k) for level, k in zip(config.from_scratch, scratch_keys)})
  if config.exploration_log_std is not None:
    noise = lambda p: {**p, 'log_std': jnp.full_like(p['log_std'], config.exploration_log_std)}
    params.update({level: noise(params[level]) for level in config.levels})
  return RRFState(params=params, normalizers=normalizers, values=values,
                  value_opt_state={level: optimizer.init(v) for level, v in values.items()},
                  buffer=empty_buffer(config) if config.variant == 'iril' else None, key=key,
                  iteration=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
                  best=init_best(params) if config.keep_best else None)


def check_agent(agent: Agent, config: RRFConfig) -> None:
  if (agent.high is None) == (config.pretrain in train.HIERARCHICAL):
    raise ValueError(f"the agent is {'flat' if agent.high is None else 'hierarchical'} but config.pretrain is "
                     f'{config.pretrain!r}: RIL and oracle agents are hierarchical, the GCBC baselines flat.')
  check_exploration(config, max(agent.by_level[level].config.min_log_std for level in config.levels))
  if agent.horizon != config.relabel.horizon:
    raise ValueError(f'the agent acts every H={agent.horizon} steps but config.relabel.horizon is '
                     f'{config.relabel.horizon}.')


def check_exploration(config: RRFConfig, min_log_std: float) -> None:
  """An `exploration_log_std` below the policies' floor (networks.PolicyConfig.min_log_std) would do nothing."""
  if config.exploration_log_std is not None and config.exploration_log_std < min_log_std:
    raise ValueError(f"exploration_log_std={config.exploration_log_std} is below the policies' log_std floor "
                     f'{min_log_std}: it would have no effect.')


def check_monitor(count: int, keep_best: bool) -> None:
  if count < 0:
    raise ValueError(f'monitor_episodes must be >= 0, got {count}.')
  if keep_best and not count:
    raise ValueError('keep_best selects parameters by the monitor: set monitor_episodes >= 1.')


def monitor_rollout(env, agent: Agent, params, normalizers, goal: jax.Array, count: int, num_steps: int,
                    mesh=None) -> Trajectory:
  """`count` episodes of the agent's mean actions toward `goal`, from the same resets (MONITOR_SEED)
  at every iteration and for every goal and run: the training rollouts sample their actions, the
  evaluated agent does not, and on this task the two can move in opposite directions (BUILD_NOTES.md,
  session 21). Split over the mesh's data axis."""
  keys = parallel.shard_batch(jax.random.split(jax.random.key(MONITOR_SEED), count), mesh)
  return agent_rollout(env, agent, params, normalizers, keys, jnp.broadcast_to(goal, (count,) + goal.shape[-1:]),
                       num_steps, deterministic=True)


def monitor_metrics(trajectory: Trajectory) -> dict[str, jax.Array]:
  """The monitor's success and step completion, under 'deterministic/'."""
  metrics = episode_metrics(trajectory)
  return {f'deterministic/{name}': metrics[name] for name in OUTCOMES}


def _bc_gradient(network: networks.GaussianPolicy, params, normalizer, batches) -> jax.Array:
  """Flat gradient of the mean log-likelihood over pools; `batches` are (inputs, tuple count) pairs,
  so each pool weighs in proportion to its tuples, as one union would."""
  total = sum(count for _, count in batches)

  def log_likelihood(p):
    return sum(count * jnp.mean(network.log_prob(p, normalizer, *inputs)) for inputs, count in batches) / total

  return ravel_pytree(jax.grad(log_likelihood)(params))[0]


def _bc_batches(config: RRFConfig, level: str, key: jax.Array, pools: list[PaddedDemos], mesh=None):
  """Per pool, (a minibatch of the level's relabeled tuples as log_prob inputs, split over the
  mesh's data axis, and the pool's tuple count), drawn as the level was pre-trained
  (train.samplers: Algorithm 2 for RIL's low level, Algorithm 3 for its high level)."""
  sampler = train.samplers(config.pretrain, config.relabel, config.bc_batch_size)[level]
  return [(parallel.shard_batch(sampler.draw(k, pool), mesh), jnp.sum(relabel.tuple_counts(pool.lengths, sampler.window)))
          for pool, k in zip(pools, jax.random.split(key, len(pools)))]


def _level_samples(config: RRFConfig, horizon: int, trajectory, goal: jax.Array) -> dict[str, dict[str, jax.Array]]:
  """Per level, [N, T_level, ...] arrays (ends: [T_level]): obs, goal (the conditioning), output,
  reward, next_obs, ends."""
  observations = trajectory.observations  # [N, T + 1, 30]
  steps = config.episode_steps
  t = jnp.arange(steps)
  if config.pretrain not in train.HIERARCHICAL:  # a flat agent acts on the goal; the env's reward, whole episodes
    reward, ends = trajectory.rewards, t == steps - 1
  else:
    reward = low_reward(config.low_reward, observations[:, 1:], trajectory.subgoals, config.reach_threshold)
    ends = ((t + 1) % horizon == 0) | (t == steps - 1)
  samples = {'low': dict(obs=observations[:, :-1], goal=trajectory.subgoals, output=trajectory.actions,
                         reward=reward, next_obs=observations[:, 1:], ends=ends)}
  if config.finetune_high:
    decisions = jnp.arange(0, steps, horizon)
    following = jnp.minimum(decisions + horizon, steps)
    segment = t // horizon  # the decision each step belongs to
    rewards = jax.vmap(lambda r: jax.ops.segment_sum(r, segment, num_segments=len(decisions)))(trajectory.rewards)
    num_envs = observations.shape[0]
    samples['high'] = dict(obs=observations[:, decisions],
                           goal=jnp.broadcast_to(goal, (num_envs, len(decisions), tasks.NQ)),
                           output=trajectory.subgoals[:, decisions], reward=rewards,
                           next_obs=observations[:, following], ends=decisions == decisions[-1])
  return samples


def make_rrf_step(env, agent: Agent, config: RRFConfig, mesh=None):
  """`step(state, goal [30], demos | None) -> (state, metrics)`: one RRF iteration toward `goal`.
  `demos` (train.training_data of the pre-training method) feed the BC term of dapg and iril; npg
  takes None. With a `mesh`
  (rpl_jax.parallel), the envs and the BC minibatches are split over its data axis."""
  check_agent(agent, config)
  value_net, value_optimizer = make_value(config), optax.adam(config.value_learning_rate)
  steps = config.episode_steps

  def episodes(params, normalizers, key, goal):
    low, high = agent.policies(params, normalizers, deterministic=False)
    run = lambda k: hierarchical_rollout(env, low, high, agent.horizon, steps, k, goal)
    return jax.vmap(run)(parallel.shard_batch(jax.random.split(key, config.num_envs), mesh))

  def step(state: RRFState, goal: jax.Array, demos: PaddedDemos | None):
    if config.uses_demos and demos is None:
      raise ValueError(f'RRF variant {config.variant!r} needs the demos for its BC term.')
    key, rollout_key, bc_key, value_key = jax.random.split(state.key, 4)
    trajectory = episodes(state.params, state.normalizers, rollout_key, goal)
    buffer = state.buffer
    if buffer is not None:
      buffer = buffer_add(buffer, trajectory.observations, trajectory.actions)
    samples = _level_samples(config, agent.horizon, trajectory, goal)
    pools = [pool for pool in (demos, None if buffer is None else buffer.episodes) if pool is not None]
    weight = dapg_weight(config, state.iteration)
    metrics = {**episode_metrics(trajectory), 'nan_physics': jnp.sum(trajectory.nan_physics), 'bc_weight': weight}
    if config.monitor_episodes:  # the parameters that drew this iteration's rollouts, acting with their means
      monitored = monitor_rollout(env, agent, state.params, state.normalizers, goal, config.monitor_episodes, steps,
                                  mesh)
      monitored_samples = _level_samples(config, agent.horizon, monitored, goal)
      metrics.update(monitor_metrics(monitored))
      metrics.update({f'deterministic/{level}/reward': jnp.mean(monitored_samples[level]['reward'])
                      for level in config.levels})
    best, kept = update_best(state.best, state.params, metrics, state.iteration)
    metrics.update(kept)
    params, values, value_opt_state, skipped = dict(state.params), dict(state.values), dict(state.value_opt_state), 0
    level_keys = dict(zip(config.levels, jax.random.split(bc_key, len(config.levels))))
    fit_keys = dict(zip(config.levels, jax.random.split(value_key, len(config.levels))))
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [N, T, ...] -> [N * T, ...]
    for level in config.levels:
      network, normalizer, s = agent.by_level[level], state.normalizers[level], samples[level]

      def predict(obs, goal, level=level, normalizer=normalizer):
        return value_net.apply(values[level], normalizer, flat(obs), flat(goal)).reshape(obs.shape[:2])

      advantages, returns = jax.vmap(functools.partial(npg.gae, gamma=config.gamma, lam=config.gae_lambda))(
          s['reward'], predict(s['obs'], s['goal']), predict(s['next_obs'], s['goal']),
          jnp.zeros_like(s['reward'], bool), jnp.broadcast_to(s['ends'], s['reward'].shape))
      batch = npg.NPGBatch(flat(s['obs']), flat(s['goal']), flat(s['output']), npg.whiten(flat(advantages)))
      extra = None
      if config.uses_demos:
        extra = weight * _bc_gradient(network, params[level], normalizer,
                                      _bc_batches(config, level, level_keys[level], pools, mesh))
      params[level], info = npg.natural_gradient_update(network, params[level], normalizer, batch, config.update, extra)
      values[level], value_opt_state[level], value_loss = npg.fit_value(
          value_net, values[level], value_opt_state[level], normalizer, batch.obs, batch.goal, flat(returns),
          value_optimizer, config.value_epochs, config.value_batch_size, fit_keys[level])
      skipped = skipped + info.skipped.astype(jnp.int32)
      metrics.update({f'{level}/{name}': value for name, value in info._asdict().items()})
      metrics[f'{level}/reward'] = jnp.mean(s['reward'])
      metrics[f'{level}/value_loss_before'], metrics[f'{level}/value_loss'] = value_loss[0], value_loss[1]
    state = state.replace(params=params, values=values, value_opt_state=value_opt_state, buffer=buffer, key=key,
                          iteration=state.iteration + 1, skipped=state.skipped + skipped, best=best)
    metrics['skipped_total'] = state.skipped
    return state, metrics

  return step


def jit_rrf_step(env, agent: Agent, config: RRFConfig, per_goal: bool = False, mesh=None):
  """The compiled iteration with the state donated (parallel.jit_step). `per_goal=True` vmaps it
  over goals: the state stacked per goal (vmap `init_state` over keys) and goals [G, 30]; the demos
  are shared. With a `mesh`, pass the inputs on it: per goal, the state and goals split over its goal
  axis (parallel.put(x, mesh, parallel.GOAL)), else replicated; the demos replicated."""
  return parallel.jit_step(make_rrf_step(env, agent, config, mesh), per_goal, mesh)
