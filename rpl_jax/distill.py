"""Distillation of per-goal fine-tuned agents into one multi-goal agent.

After RRF, each compound goal has its own parameters (stacked on a leading goal axis). `collect`
rolls every goal's teacher out toward its own goal (deterministic, the mean policy), all goals and
episodes in one vmapped rollout. `make_distill` then fits a student of the same structure by
supervised learning on those rollouts: the low level on (state, subgoal) -> the teacher's action,
and, when the high levels were fine-tuned too, the high level on (state at a decision, goal) -> the
teacher's subgoal. One compiled function runs the `updates` Adam steps as a `lax.scan`.
`per_goal_students` fits one student per goal instead, each on its own teacher's samples alone
(experiments/probe_distill.py: does one student keep the per-goal agents' gain?).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rpl_jax.rollout import Agent, agent_rollout


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  episodes_per_goal: int = 16
  updates: int = 2000
  batch_size: int = 256
  learning_rate: float = 1e-3

  def __post_init__(self):
    for name in ('episodes_per_goal', 'updates', 'batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}.')


def collect(env, agent: Agent, params: dict[str, Any], normalizers, key: jax.Array, goals: jax.Array,
            episodes: int, num_steps: int, levels: tuple[str, ...]) -> dict[str, tuple[jax.Array, ...]]:
  """The teachers' labelled samples, flattened over goals, episodes and steps: per level in `levels`,
  (inputs, conditioning, targets). `params` are stacked per goal ([G, ...]); goals [G, 30]. Jit it
  with env, agent, episodes, num_steps and levels static."""
  num_goals = goals.shape[0]
  keys = jax.random.split(key, (num_goals, episodes))
  per_goal = lambda p, k, g: agent_rollout(env, agent, p, normalizers, k, jnp.broadcast_to(g, (episodes,) + g.shape),
                                           num_steps, deterministic=True)
  trajectory = jax.vmap(per_goal)(params, keys, goals)  # [G, E, ...]
  flat = lambda x: x.reshape((-1,) + x.shape[3:])
  data = {'low': (flat(trajectory.observations[:, :, :-1]), flat(trajectory.subgoals), flat(trajectory.actions))}
  if 'high' in levels:
    decisions = jnp.arange(0, num_steps, agent.horizon)
    goal = jnp.broadcast_to(goals[:, None, None, :], (num_goals, episodes, len(decisions), goals.shape[-1]))
    data['high'] = (flat(trajectory.observations[:, :, decisions]), flat(goal), flat(trajectory.subgoals[:, :, decisions]))
  return data


def split_by_goal(data: dict[str, tuple[jax.Array, ...]], num_goals: int) -> dict[str, tuple[jax.Array, ...]]:
  """`collect`'s samples with a leading goal axis ([G, E * steps, ...]): each goal's teacher's alone."""
  return jax.tree.map(lambda x: x.reshape((num_goals, -1) + x.shape[1:]), data)


def make_distill(agent: Agent, config: DistillConfig):
  """`distill(params, normalizers, data, key) -> (params, metrics)`: fits the levels present in
  `data` (from `collect`) starting from `params` (one agent, unstacked); the other levels are kept.
  Metrics: each level's negative log-likelihood of the teachers' outputs, per update [updates]."""
  optimizer = optax.adam(config.learning_rate)

  def distill(params, normalizers, data, key):
    levels = tuple(data)
    student = {level: params[level] for level in levels}

    def nll(student, batches):
      losses = {level: -jnp.mean(agent.by_level[level].log_prob(student[level], normalizers[level], *batches[level]))
                for level in levels}
      return sum(losses.values()), losses

    def update(carry, key):
      student, opt_state = carry
      batches = {}
      for level, k in zip(levels, jax.random.split(key, len(levels))):
        index = jax.random.randint(k, (config.batch_size,), 0, data[level][0].shape[0])
        batches[level] = tuple(x[index] for x in data[level])
      (_, losses), grads = jax.value_and_grad(nll, has_aux=True)(student, batches)
      updates, opt_state = optimizer.update(grads, opt_state, student)
      return (optax.apply_updates(student, updates), opt_state), {f'nll_{level}': v for level, v in losses.items()}

    (student, _), metrics = jax.lax.scan(update, (student, optimizer.init(student)),
                                         jax.random.split(key, config.updates))
    return dict(params, **student), metrics

  return distill


def per_goal_students(distill, num_goals: int):
  """From `distill` (make_distill's): `(params, normalizers, data, key) -> (params, metrics)` that fits
  one student per goal from the same `params` and `key`, each on its own goal's samples of `data`
  (`collect`'s); params and metrics come back stacked per goal ([G, ...])."""
  fit = jax.vmap(distill, in_axes=(None, None, 0, None))
  return lambda params, normalizers, data, key: fit(params, normalizers, split_by_goal(data, num_goals), key)
