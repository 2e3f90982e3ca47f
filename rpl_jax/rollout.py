"""Hierarchical rollout: one `lax.scan` over an episode of the kitchen env.

The high level acts every `horizon` steps (at t = 0, H, 2H, ...): it reads the observation and the
episode's goal and emits a subgoal, which is held in the scan's carry until its next decision. The
low level acts every step on the observation and the current subgoal. A flat policy (the GCBC
baselines) is the same rollout without a high level: its "subgoal" is the goal itself.

Policies are inference functions `(obs, goal, key) -> output` (networks.GaussianPolicy.policy), so
the rollout knows nothing about parameters; bind `deterministic=True` in them for the mean policy.
The rollout is pure and reaches the env only through `reset`/`step`: vmap it over envs and goals,
on any backend. `run_episode` is the scan under both this rollout and the open-loop replay of a
demo's actions (the nearest-neighbour baseline).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rpl_jax import networks

Policy = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Agent:
  """The static structure of a (hierarchical) goal-conditioned agent. Its parameters and normalizers
  are dicts keyed 'low' (and 'high' when there is a high level)."""
  low: networks.GaussianPolicy  # (obs, subgoal) -> action
  high: networks.GaussianPolicy | None  # (obs, goal) -> subgoal; None for a flat policy
  horizon: int  # H: steps between high-level decisions

  def __post_init__(self):
    if self.horizon < 1:
      raise ValueError(f'the high-level horizon H must be >= 1, got {self.horizon}.')

  @property
  def by_level(self) -> dict[str, networks.GaussianPolicy]:
    return {'low': self.low} if self.high is None else {'low': self.low, 'high': self.high}

  @property
  def levels(self) -> tuple[str, ...]:
    return tuple(self.by_level)

  def policies(self, params: dict[str, Any], normalizers: dict[str, Any], deterministic: bool):
    """The inference functions (low, high or None) for these parameters."""
    bound = {}
    for level, network in self.by_level.items():
      act = network.policy(params[level], normalizers[level])
      bound[level] = functools.partial(act, deterministic=deterministic)
    return bound['low'], bound.get('high')


def ensemble(agent: Agent, members: int) -> Agent:
  """The agent whose every level is the ensemble (networks.EnsemblePolicy) of `members` agents of
  `agent`'s structure; its params are theirs stacked (networks.stack_members), with their shared
  normalizers."""
  as_ensemble = lambda network: networks.EnsemblePolicy(network.obs_dim, network.goal_dim, network.output_dim,
                                                        network.config, members=members)
  return Agent(as_ensemble(agent.low), None if agent.high is None else as_ensemble(agent.high), agent.horizon)


class Trajectory(NamedTuple):
  observations: jax.Array  # [T+1, obs]: the reset observation first
  actions: jax.Array  # [T, 9]
  subgoals: jax.Array  # [T, 30]: the subgoal the low level acted on at each step
  rewards: jax.Array  # [T]: the env's reward, goal elements completed for the first time at this step
  completed: jax.Array  # bool [T+1, 7]: elements of the goal completed so far (sticky, as the env counts)
  step_completion: jax.Array  # [T+1]: completed goal elements (0-4)
  success: jax.Array  # [T+1]: all goal elements completed
  nan_physics: jax.Array  # [T]: the physics diverged at this step (the env kept the last good state)


def run_episode(env, act: Callable, carry: Any, key: jax.Array, goal: jax.Array, num_steps: int,
                reset_key: jax.Array | None = None) -> Trajectory:
  """One episode of `num_steps` steps toward `goal` ([30]) from a reset drawn from `key` (or from
  `reset_key`, e.g. a demo's own: data.play.demo_keys), under the controller
  `act(carry, obs, t, (key, key)) -> (carry, action [9], subgoal [30])`, whose `carry` (any pytree)
  rides in the scan's carry."""
  if num_steps < 1:
    raise ValueError(f'need num_steps >= 1, got {num_steps}.')
  drawn_key, key = jax.random.split(key)
  state = env.reset(drawn_key if reset_key is None else reset_key, goal)

  def step(scan_carry, t):
    state, carry, key = scan_carry
    key, *act_keys = jax.random.split(key, 3)
    carry, action, subgoal = act(carry, state.obs, t, act_keys)
    state = env.step(state, action)
    record = (state.obs, action, subgoal, state.reward, state.info['completed'], state.metrics['step_completion'],
              state.metrics['success'], state.metrics['nan_physics'])
    return (state, carry, key), record

  observations, actions, subgoals, rewards, completed, step_completion, success, nan_physics = jax.lax.scan(
      step, (state, carry, key), jnp.arange(num_steps))[1]

  def with_reset(first, rest):
    return jnp.concatenate([first[None], rest])

  return Trajectory(with_reset(state.obs, observations), actions, subgoals, rewards,
                    with_reset(state.info['completed'], completed),
                    with_reset(state.metrics['step_completion'], step_completion),
                    with_reset(state.metrics['success'], success), nan_physics)


def hierarchical_rollout(env, low: Policy, high: Policy | None, horizon: int, num_steps: int, key: jax.Array,
                         goal: jax.Array) -> Trajectory:
  """Runs one episode of `num_steps` steps toward `goal` ([30]) from a reset drawn from `key`.
  `high=None` runs `low` as a flat goal-conditioned policy. `horizon` and `num_steps` are static."""
  if horizon < 1:
    raise ValueError(f'need horizon >= 1, got {horizon}.')

  def act(subgoal, obs, t, keys):
    high_key, low_key = keys
    if high is not None:
      subgoal = jax.lax.cond(t % horizon == 0, lambda: high(obs, goal, high_key), lambda: subgoal)
    return subgoal, low(obs, subgoal, low_key), subgoal

  return run_episode(env, act, jnp.asarray(goal, jnp.float32), key, goal, num_steps)


def open_loop_rollout(env, actions: jax.Array, length: jax.Array, key: jax.Array, goal: jax.Array,
                      num_steps: int) -> Trajectory:
  """Replays `actions` ([T, 9], the first `length` valid) open loop toward `goal`, then holds still
  (action 0: the position targets stay at the observed joints) until `num_steps`."""
  goal, actions = jnp.asarray(goal, jnp.float32), jnp.asarray(actions)

  def act(carry, obs, t, keys):
    action = jnp.where(t < length, actions[jnp.minimum(t, actions.shape[0] - 1)], 0.0)
    return carry, action, goal

  return run_episode(env, act, (), key, goal, num_steps)


def agent_rollout(env, agent: Agent, params, normalizers, keys: jax.Array, goals: jax.Array, num_steps: int,
                  deterministic: bool) -> Trajectory:
  """Episodes of `agent` for a batch of keys [B] and goals [B, 30] (vmapped). Pure: jit it with env,
  agent, num_steps and deterministic bound (functools.partial); the parameters stay arguments."""
  low, high = agent.policies(params, normalizers, deterministic)
  run = lambda key, goal: hierarchical_rollout(env, low, high, agent.horizon, num_steps, key, goal)
  return jax.vmap(run)(keys, goals)


def episode_metrics(trajectory: Trajectory) -> dict[str, jax.Array]:
  """Means over a batch of episodes ([N, T + 1, ...] fields) of the final success and step
  completion, and the per-element completion [7]."""
  return {'success': jnp.mean(trajectory.success[:, -1]),
          'step_completion': jnp.mean(trajectory.step_completion[:, -1]),
          'element_completion': jnp.mean(trajectory.completed[:, -1], axis=0)}
