"""An AW-Opt-style off-policy IL+RL trainer (Lu et al., CoRL 2021), simplified, on RRF's env batch.

One compiled iteration (`make_awopt_step`, the same signature as rrf.make_rrf_step, so the main job
vmaps it over goals, checkpoints and logs it the same way):
  1. `num_envs` episodes of the stochastic goal-conditioned actor toward the goal (rollout.py);
  2. their transitions appended to a fixed-capacity replay ring buffer on the device;
  3. `updates` gradient steps (a `lax.scan`), each on a minibatch of which `demo_fraction` are demo
     transitions and the rest buffer transitions:
     - critic: Q(s, g, a) regressed to the target r + gamma (1 - done) Q_target(s', g, mu(s', g));
     - actor: advantage-weighted regression, -mean(w log pi(a | s, g)) with
       w = min(exp((Q(s, g, a) - Q(s, g, mu(s, g))) / beta), max_weight);
     - the target critic follows by Polyak averaging;
  4. with `monitor_episodes`, that many episodes of the pre-update actor's mean action from fixed
     resets (rrf.monitor_rollout), logged under 'deterministic/'; with `keep_best`, the state keeps
     the actor that scored best on them (rrf.Best).

Simplifications, stated: the actor chooses the actions (no cross-entropy-method maximisation of Q as
in QT-Opt / AW-Opt), and the targets use the actor's mean action mu. Rewards are computed from
states for demos and rollouts alike, as goal progress r = |complete(s') & goal| - |complete(s) &
goal| (over an episode it sums to the env's step completion when nothing is undone); done = every
goal element complete in s'. Demo transitions carry the commanded goal. The agent is a flat
goal-conditioned policy initialised by GCBC or BC on the same demos (train.py); Q is a value network
(networks.ValueNetwork) of the state and the concatenated goal and action.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from envs.kitchen import ACTION_DIM, tasks
from rpl_jax import networks, parallel, relabel, rrf, train
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import Agent, episode_metrics, hierarchical_rollout


@dataclasses.dataclass(frozen=True)
class AWOptConfig:
  pretrain: str = 'gcbc'  # the flat agent's imitation method (train.METHODS): gcbc or gcbc_final
  num_envs: int = 64  # episodes per iteration (per goal)
  episode_steps: int = 280
  updates: int = 100  # critic and actor gradient steps per iteration
  batch_size: int = 256
  demo_fraction: float = 0.5  # of each minibatch drawn from the demos
  buffer_transitions: int = 100_000
  gamma: float = 0.99
  beta: float = 1.0  # AWR temperature
  max_weight: float = 20.0
  q_hidden: tuple[int, ...] = (256, 256)
  q_learning_rate: float = 3e-4
  actor_learning_rate: float = 1e-4
  polyak: float = 0.005
  monitor_episodes: int = 0  # mean-action episodes per iteration, reported as deterministic/* (rrf.monitor_metrics)
  keep_best: bool = False  # keep the best monitored actor as the fine-tuned one (rrf.RRFConfig.keep_best)

  def __post_init__(self):
    object.__setattr__(self, 'q_hidden', tuple(self.q_hidden))
    if self.pretrain not in train.METHODS or self.pretrain in train.HIERARCHICAL:
      raise ValueError(f"AW-Opt trains a flat agent: pretrain must be 'gcbc' or 'gcbc_final', got {self.pretrain!r}.")
    for name in ('num_envs', 'episode_steps', 'updates', 'batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    rrf.check_monitor(self.monitor_episodes, self.keep_best)
    if not 0 <= self.demo_fraction <= 1 or not 0 < self.polyak <= 1 or not 0 < self.gamma <= 1:
      raise ValueError(f'need demo_fraction in [0, 1], polyak and gamma in (0, 1], got {self.demo_fraction}, '
                       f'{self.polyak} and {self.gamma}.')
    if not (self.beta > 0 and self.max_weight > 0 and self.q_learning_rate > 0 and self.actor_learning_rate > 0):
      raise ValueError('beta, max_weight and the learning rates must be positive.')
    if self.buffer_transitions < self.num_envs * self.episode_steps:
      raise ValueError(f'the replay buffer must hold one iteration: buffer_transitions={self.buffer_transitions} < '
                       f'{self.num_envs * self.episode_steps}.')

  @property
  def variant(self) -> str:
    """The main job's rrf.variant for this trainer."""
    return 'awopt'

  @property
  def levels(self) -> tuple[str, ...]:
    """The trained levels (as rrf.RRFConfig's): the flat agent's one."""
    return ('low',)

  @property
  def uses_demos(self) -> bool:
    return True

  @property
  def demo_batch(self) -> int:
    return round(self.demo_fraction * self.batch_size)


@struct.dataclass
class Transitions:
  obs: jax.Array  # [B, 30]
  action: jax.Array  # [B, 9]
  next_obs: jax.Array  # [B, 30]


@struct.dataclass
class AWOptState:
  params: dict[str, Any]  # {'low': the actor}, as rrf.RRFState
  normalizers: dict[str, networks.PolicyNormalizer]
  q: Any
  q_target: Any
  actor_opt_state: Any
  q_opt_state: Any
  buffer: Transitions  # [C, ...]
  cursor: jax.Array  # int32: the next slot
  size: jax.Array  # int32: filled slots
  key: jax.Array
  iteration: jax.Array
  best: rrf.Best | None  # keep_best only


def progress(obs: jax.Array, next_obs: jax.Array, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(reward, done) [...]: goal elements completed minus undone between obs and next_obs ([..., 30]),
  and whether next_obs completes the goal ([30])."""
  mask = tasks.goal_mask(goal)
  count = lambda s: jnp.sum(tasks.element_completion(s) & mask, axis=-1).astype(jnp.float32)
  return count(next_obs) - count(obs), tasks.all_complete(tasks.element_completion(next_obs), mask)


def advantage_weights(q_taken: jax.Array, q_mean: jax.Array, beta: float, max_weight: float) -> jax.Array:
  """AWR's weights min(exp((Q(s, a) - V(s)) / beta), max_weight), V(s) = Q(s, mu(s))."""
  return jnp.minimum(jnp.exp((q_taken - q_mean) / beta), max_weight)


def q_targets(reward: jax.Array, done: jax.Array, next_q: jax.Array, gamma: float) -> jax.Array:
  """TD(0) targets r + gamma (1 - done) Q_target(s', mu(s'))."""
  return reward + gamma * (1.0 - done.astype(jnp.float32)) * next_q


def make_q(config: AWOptConfig) -> networks.ValueNetwork:
  return networks.make_value(tasks.NQ, tasks.NQ + ACTION_DIM, config.q_hidden)


def q_normalizer(policy: networks.PolicyNormalizer) -> networks.PolicyNormalizer:
  """The critic's: the policy's state normalizer, and its goal normalizer extended by the identity
  over the action (already in [-1, 1])."""
  goal = networks.Normalizer(jnp.concatenate([policy.goal.mean, jnp.zeros(ACTION_DIM)]),
                             jnp.concatenate([policy.goal.std, jnp.ones(ACTION_DIM)]))
  return policy.replace(goal=goal)


def _optimizers(config: AWOptConfig):
  return optax.adam(config.actor_learning_rate), optax.adam(config.q_learning_rate)


def check_agent(agent: Agent) -> None:
  if agent.high is not None:
    raise ValueError('AW-Opt trains a flat goal-conditioned agent; pre-train it with GCBC or BC '
                     "(ril.method 'gcbc' or 'gcbc_final').")


def init_state(agent: Agent, config: AWOptConfig, params: dict[str, Any],
               normalizers: dict[str, networks.PolicyNormalizer], key: jax.Array) -> AWOptState:
  """The trainer's state from the pre-trained actor: a fresh critic (its target a copy), an empty
  buffer and, with keep_best, an unscored rrf.Best. vmap it over keys for per-goal states."""
  check_agent(agent)
  key, q_key = jax.random.split(key)
  params, normalizers = jax.tree.map(jnp.copy, (params, normalizers))
  q = make_q(config).init(q_key)
  actor_optimizer, q_optimizer = _optimizers(config)
  capacity = config.buffer_transitions
  buffer = Transitions(jnp.zeros((capacity, tasks.NQ)), jnp.zeros((capacity, ACTION_DIM)), jnp.zeros((capacity, tasks.NQ)))
  zero = lambda: jnp.zeros((), jnp.int32)  # a buffer each: the compiled step donates the state
  return AWOptState(params=params, normalizers=normalizers, q=q, q_target=jax.tree.map(jnp.copy, q),
                    actor_opt_state=actor_optimizer.init(params['low']), q_opt_state=q_optimizer.init(q),
                    buffer=buffer, cursor=zero(), size=zero(), key=key, iteration=zero(),
                    best=rrf.init_best(params) if config.keep_best else None)


def buffer_add(state: AWOptState, transitions: Transitions) -> AWOptState:
  """Writes [M] transitions at the cursor, overwriting the oldest once full."""
  capacity, count = state.buffer.obs.shape[0], transitions.obs.shape[0]
  slots = (state.cursor + jnp.arange(count)) % capacity
  buffer = jax.tree.map(lambda old, new: old.at[slots].set(new), state.buffer, transitions)
  return state.replace(buffer=buffer, cursor=(state.cursor + count) % capacity,
                       size=jnp.minimum(state.size + count, capacity))


def _demo_transitions(key: jax.Array, demos: PaddedDemos, batch_size: int) -> Transitions:
  demo, t, _ = relabel.sample_windows(key, demos.lengths, 1, batch_size)  # every (i, t < T_i) once
  return Transitions(demos.observations[demo, t], demos.actions[demo, t], demos.observations[demo, t + 1])


def make_awopt_step(env, agent: Agent, config: AWOptConfig, mesh=None):
  """`step(state, goal [30], demos) -> (state, metrics)`: one iteration toward `goal`; `demos` are
  device PaddedDemos. With a `mesh`, the envs are split over its data axis."""
  check_agent(agent)
  q_net, network = make_q(config), agent.low
  actor_optimizer, q_optimizer = _optimizers(config)
  online_batch = config.batch_size - config.demo_batch

  def step(state: AWOptState, goal: jax.Array, demos: PaddedDemos):
    key, rollout_key, update_key = jax.random.split(state.key, 3)
    low, _ = agent.policies(state.params, state.normalizers, deterministic=False)
    run = lambda k: hierarchical_rollout(env, low, None, agent.horizon, config.episode_steps, k, goal)
    trajectory = jax.vmap(run)(parallel.shard_batch(jax.random.split(rollout_key, config.num_envs), mesh))
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    state = buffer_add(state, Transitions(flat(trajectory.observations[:, :-1]), flat(trajectory.actions),
                                          flat(trajectory.observations[:, 1:])))
    policy_normalizer = state.normalizers['low']
    critic_normalizer = q_normalizer(policy_normalizer)
    q_value = lambda q, obs, action: q_net.apply(q, critic_normalizer, obs, jnp.concatenate(
        [jnp.broadcast_to(goal, obs.shape), action], axis=-1))
    mean_action = lambda actor, obs: network.apply(actor, policy_normalizer, obs, goal)[0]

    def update(carry, key):
      actor, q, q_target, actor_opt, q_opt = carry
      demo_key, buffer_key = jax.random.split(key)
      index = jax.random.randint(buffer_key, (online_batch,), 0, state.size)
      online = jax.tree.map(lambda x: x[index], state.buffer)
      batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), _demo_transitions(demo_key, demos, config.demo_batch),
                           online)
      reward, done = progress(batch.obs, batch.next_obs, goal)
      target = q_targets(reward, done, q_value(q_target, batch.next_obs, mean_action(actor, batch.next_obs)),
                         config.gamma)
      q_loss, q_grads = jax.value_and_grad(lambda p: jnp.mean((q_value(p, batch.obs, batch.action) - target)**2))(q)
      q_updates, q_opt = q_optimizer.update(q_grads, q_opt, q)
      q = optax.apply_updates(q, q_updates)
      weights = advantage_weights(q_value(q, batch.obs, batch.action), q_value(q, batch.obs, mean_action(actor, batch.obs)),
                                  config.beta, config.max_weight)
      actor_loss, actor_grads = jax.value_and_grad(
          lambda p: -jnp.mean(weights * network.log_prob(p, policy_normalizer, batch.obs, goal, batch.action)))(actor)
      actor_updates, actor_opt = actor_optimizer.update(actor_grads, actor_opt, actor)
      actor = optax.apply_updates(actor, actor_updates)
      q_target = optax.incremental_update(q, q_target, config.polyak)
      return (actor, q, q_target, actor_opt, q_opt), {'q_loss': q_loss, 'actor_loss': actor_loss,
                                                      'mean_weight': jnp.mean(weights), 'mean_target': jnp.mean(target)}

    carry = (state.params['low'], state.q, state.q_target, state.actor_opt_state, state.q_opt_state)
    (actor, q, q_target, actor_opt, q_opt), losses = jax.lax.scan(update, carry,
                                                                   jax.random.split(update_key, config.updates))
    metrics = {**episode_metrics(trajectory), 'nan_physics': jnp.sum(trajectory.nan_physics), 'buffer_size': state.size,
               **{f'low/{name}': jnp.mean(value) for name, value in losses.items()}}
    if config.monitor_episodes:  # the actor that drew this iteration's rollouts, acting with its mean
      metrics.update(rrf.monitor_metrics(rrf.monitor_rollout(env, agent, state.params, state.normalizers, goal,
                                                              config.monitor_episodes, config.episode_steps, mesh)))
    best, kept = rrf.update_best(state.best, state.params, metrics, state.iteration)
    metrics.update(kept)
    state = state.replace(params=dict(state.params, low=actor), q=q, q_target=q_target, actor_opt_state=actor_opt,
                          q_opt_state=q_opt, key=key, iteration=state.iteration + 1, best=best)
    return state, metrics

  return step
