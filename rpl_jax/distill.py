"""Distillation: of per-goal fine-tuned agents into one multi-goal agent, and of any teacher agent (an
ensemble of RIL agents) into one by DAgger.

After RRF, each compound goal has its own parameters (stacked on a leading goal axis). `collect`
rolls every goal's teacher out toward its own goal (deterministic, the mean policy), all goals and
episodes in one vmapped rollout. `make_distill` then fits a student of the same structure by
supervised learning on those rollouts: the low level on (state, subgoal) -> the teacher's action,
and, when the high levels were fine-tuned too, the high level on (state at a decision, goal) -> the
teacher's subgoal. One compiled function runs the `updates` Adam steps as a `lax.scan`.
`per_goal_students` fits one student per goal instead, each on its own teacher's samples alone
(experiments/probe_distill.py: does one student keep the per-goal agents' gain?).

`dagger` distils one teacher for every goal, such as an ensemble (rollout.ensemble), on the states
the student itself reaches (DAgger, Ross et al. 2011): the teacher's episodes first, then rounds of
the student's own, each labelled by the teacher (`teacher_labels`) and aggregated before the student
is fitted again (experiments/distill_ensemble.py).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rpl_jax.rollout import Agent, Trajectory, agent_rollout


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  episodes_per_goal: int = 16
  updates: int = 2000
  batch_size: int = 256
  learning_rate: float = 1e-3
  # The learning rate falls to 0 along a cosine over each fit's `updates`, so that a student ends where
  # the fit settles rather than where Adam's last steps left it (BUILD_NOTES, "Distilling the RIL
  # ensemble"). False: constant.
  decay: bool = False

  def __post_init__(self):
    for name in ('episodes_per_goal', 'updates', 'batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}.')


def episodes_per_goal(env, agent: Agent, params: dict[str, Any], normalizers, key: jax.Array, goals: jax.Array,
                      episodes: int, num_steps: int, per_goal: bool = True) -> Trajectory:
  """Mean-action episodes toward each of goals [G, 30], [G, E, ...]: with `per_goal`, params stacked per
  goal ([G, ...]) and each goal's own agent acting; otherwise one agent's params for every goal. Jit it
  with env, agent, episodes, num_steps and per_goal static."""
  keys = jax.random.split(key, (goals.shape[0], episodes))
  run = lambda p, k, g: agent_rollout(env, agent, p, normalizers, k, jnp.broadcast_to(g, (episodes,) + g.shape),
                                      num_steps, deterministic=True)
  return jax.vmap(run, in_axes=(0 if per_goal else None, 0, 0))(params, keys, goals)


def _flat(x: jax.Array) -> jax.Array:
  """[G, E, T, ...] -> [G * E * T, ...]."""
  return x.reshape((-1,) + x.shape[3:])


def collect(env, agent: Agent, params: dict[str, Any], normalizers, key: jax.Array, goals: jax.Array,
            episodes: int, num_steps: int, levels: tuple[str, ...]) -> dict[str, tuple[jax.Array, ...]]:
  """The teachers' labelled samples, flattened over goals, episodes and steps: per level in `levels`,
  (inputs, conditioning, targets). `params` are stacked per goal ([G, ...]); goals [G, 30]. Jit it
  with env, agent, episodes, num_steps and levels static."""
  num_goals = goals.shape[0]
  trajectory = episodes_per_goal(env, agent, params, normalizers, key, goals, episodes, num_steps)  # [G, E, ...]
  data = {'low': (_flat(trajectory.observations[:, :, :-1]), _flat(trajectory.subgoals), _flat(trajectory.actions))}
  if 'high' in levels:
    decisions = jnp.arange(0, num_steps, agent.horizon)
    goal = jnp.broadcast_to(goals[:, None, None, :], (num_goals, episodes, len(decisions), goals.shape[-1]))
    data['high'] = (_flat(trajectory.observations[:, :, decisions]), _flat(goal),
                    _flat(trajectory.subgoals[:, :, decisions]))
  return data


def split_by_goal(data: dict[str, tuple[jax.Array, ...]], num_goals: int) -> dict[str, tuple[jax.Array, ...]]:
  """`collect`'s samples with a leading goal axis ([G, E * steps, ...]): each goal's teacher's alone."""
  return jax.tree.map(lambda x: x.reshape((num_goals, -1) + x.shape[1:]), data)


def make_distill(agent: Agent, config: DistillConfig):
  """`distill(params, normalizers, data, key) -> (params, metrics)`: fits the levels present in
  `data` (from `collect`) starting from `params` (one agent, unstacked); the other levels are kept.
  Metrics: each level's negative log-likelihood of the teachers' outputs, per update [updates]."""
  optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.updates) if config.decay
                         else config.learning_rate)

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


def teacher_labels(teacher: Agent, params: dict[str, Any], normalizers, trajectory: Trajectory,
                   goals: jax.Array) -> dict[str, tuple[jax.Array, ...]]:
  """`teacher`'s mean outputs on the states of `trajectory` (any agent's episodes toward goals [G, 30],
  fields [G, E, ...]), as `collect`'s samples: the low level's action for each (state, the subgoal the
  acting agent's low level had) and, when the teacher has a high level, its subgoal for each (state,
  goal) at every step, not only at the acting agent's decisions. `params`: one agent's, for every goal."""
  observations, subgoals = _flat(trajectory.observations[:, :, :-1]), _flat(trajectory.subgoals)
  label = lambda level, conditioning: teacher.by_level[level].apply(params[level], normalizers[level], observations,
                                                                    conditioning)[0]
  data = {'low': (observations, subgoals, label('low', subgoals))}
  if teacher.high is not None:
    goal = _flat(jnp.broadcast_to(goals[:, None, None, :], trajectory.subgoals.shape))
    data['high'] = (observations, goal, label('high', goal))
  return data


def dagger(env, teacher: Agent, teacher_params: dict[str, Any], student: Agent, student_params: dict[str, Any],
           normalizers, goals: jax.Array, key: jax.Array, config: DistillConfig, rounds: int, num_steps: int):
  """Fits `student` (starting from `student_params`) to `teacher` (one agent for every goal, e.g. an
  ensemble of the student's structure) on episodes toward goals [G, 30]: fit 0 on the teacher's own
  config.episodes_per_goal episodes per goal, then `rounds` times the student's own as many episodes,
  labelled by the teacher and added to the data before the student is fitted again (config.updates,
  from where the last fit left it). Both share `normalizers`. Returns (params after each fit, the list
  of rounds + 1; history: per fit, the samples it fitted on, its last update's negative log-likelihoods
  and the success and step completion of the episodes it added)."""
  if rounds < 0:
    raise ValueError(f'rounds must be >= 0, got {rounds}.')
  if teacher.levels != student.levels or teacher.horizon != student.horizon:
    raise ValueError(f'the teacher ({teacher.levels}, H = {teacher.horizon}) and the student ({student.levels}, '
                     f'H = {student.horizon}) must have the same levels and horizon.')
  rollout = lambda agent: jax.jit(functools.partial(episodes_per_goal, env, agent, episodes=config.episodes_per_goal,
                                                    num_steps=num_steps, per_goal=False))
  act = {'teacher': rollout(teacher), 'student': rollout(student)}
  label = jax.jit(functools.partial(teacher_labels, teacher))
  fit = jax.jit(make_distill(student, config))
  fitted, history, data = [], [], None
  for r, round_key in enumerate(jax.random.split(key, rounds + 1)):
    collect_key, fit_key = jax.random.split(round_key)
    actor, params = ('teacher', teacher_params) if r == 0 else ('student', student_params)
    trajectory = act[actor](params, normalizers, collect_key, goals)
    new = label(teacher_params, normalizers, trajectory, goals)
    data = new if data is None else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), data, new)
    student_params, metrics = fit(student_params, normalizers, data, fit_key)
    fitted.append(student_params)
    history.append({'episodes_of': actor, 'samples': int(data['low'][0].shape[0]),
                    'success': float(np.mean(trajectory.success[:, :, -1])),
                    'step_completion': float(np.mean(trajectory.step_completion[:, :, -1])),
                    **{name: float(value[-1]) for name, value in metrics.items()}})
  return fitted, history
