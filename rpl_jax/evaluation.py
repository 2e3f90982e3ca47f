"""Evaluation on compound goals: step-completion score (0-4) and success, per goal and per element.

Every goal gets `episodes` episodes, each from its own reset key; all run together in one vmapped,
jitted rollout (rpl_jax.rollout.agent_rollout). An element counts as complete once it has been within
the 0.3 threshold during the episode (the env's sticky completion, as FrankaKitchen-v1 counts it);
success is all four. `summarize` turns the raw arrays into the tables that the experiments print.

The agent is conditioned on a goal state: the reset state with the goal's elements at FrankaKitchen's
goal values, or at `goal_values('demos', demos)`, where the demos leave completed elements (the
experiments' default; BUILD_NOTES.md, "Goal states from the demos"). Completion is judged against the
goal values either way.
"""

import fractions
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import render, tasks
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import Agent, agent_rollout


class Evaluation(NamedTuple):
  goals: tuple[str, ...]  # [G] compound goals, e.g. 'microwave-kettle-topknob-hinge'
  step_completion: np.ndarray  # [G, E] elements of the goal completed (0-4)
  success: np.ndarray  # bool [G, E]
  element_completion: np.ndarray  # bool [G, E, 7] over tasks.ELEMENTS (False where the goal lacks the element)
  nan_steps: np.ndarray  # [G, E] steps whose physics diverged (the env kept the last good state)
  final_state: np.ndarray  # [G, E, 30] the last observed state


GoalValues = Mapping[str, Sequence[float]]  # element -> the coordinates a goal state gives it


def goal_states(goals: Sequence[str], values: GoalValues | None = None) -> np.ndarray:
  """[G, 30]: the reset state with each goal's elements at `values` (tasks.goal_state)."""
  return np.stack([tasks.goal_state(goal, values=values) for goal in goals]).astype(np.float32)


GOAL_SOURCES = ('demos', 'task')  # where goal states put their elements (goal_values)


def goal_values(source: str, demos: PaddedDemos | None = None) -> dict[str, tuple[float, ...]]:
  """Per element, the coordinates goal states give it: for 'demos', where the demos leave it
  completed (tasks.completed_values over their real states; FrankaKitchen's goal value for an element
  they never complete); for 'task', FrankaKitchen's goal values."""
  if source not in GOAL_SOURCES or (source == 'demos' and demos is None):
    raise ValueError(f'goal values come from one of {GOAL_SOURCES} (demos given for the first), got {source!r}.')
  values = dict(tasks.ELEMENT_GOALS)
  if source == 'demos':
    real = np.arange(demos.observations.shape[1])[None, :] <= np.asarray(demos.lengths)[:, None]
    values.update(tasks.completed_values(np.asarray(demos.observations)[real][:, :tasks.NQ]))
  return values


def make_evaluator(env, agent: Agent, num_steps: int, deterministic: bool = True, values: GoalValues | None = None):
  """`evaluate(params, normalizers, key, goals, episodes, per_goal=False) -> Evaluation`, compiled
  once per number of goals and episodes; the agent is given goal_states(goals, values). With
  `per_goal`, params are stacked per goal ([G, ...], in the order of `goals`, as RRF's per-goal
  fine-tuning leaves them) and each goal runs its own agent; otherwise every goal runs copies of the
  one agent (`tiled`). Both go through the same compiled per-goal rollout, so identical parameters
  score identically either way."""
  rollout = functools.partial(agent_rollout, env, agent, num_steps=num_steps, deterministic=deterministic)
  rollout = jax.jit(jax.vmap(rollout, in_axes=(0, None, 0, 0)))

  def evaluate(params, normalizers, key: jax.Array, goals: Sequence[str], episodes: int,
               per_goal: bool = False) -> Evaluation:
    goals = check_goals(goals, episodes)
    shape = (len(goals), episodes)
    if not per_goal:
      params = tiled(params, len(goals))
    elif any(leaf.shape[:1] != (len(goals),) for leaf in jax.tree.leaves(params)):
      raise ValueError(f'per-goal params must be stacked over the {len(goals)} goals on their leading axis.')
    keys = jax.random.split(key, shape)  # goal-major: the same keys as split(key, G * E)
    states = jnp.asarray(np.repeat(goal_states(goals, values), episodes, axis=0)).reshape(shape + (tasks.NQ,))
    return from_trajectory(goals, episodes, rollout(params, normalizers, keys, states))

  return evaluate


def tiled(params, copies: int):
  """[copies, ...]: one agent's parameters as per-goal parameters, materialised (outside any jit),
  so that the rollout batches them exactly as it batches fine-tuned ones."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (copies,) + x.shape), params)


def check_goals(goals: Sequence[str], episodes: int = 1) -> tuple[str, ...]:
  """The goals as a tuple; no goals, a repeated goal (results are kept per goal), unknown element
  names or episodes < 1 fail here, before compiling."""
  if episodes < 1:
    raise ValueError(f'episodes must be >= 1, got {episodes}.')
  if not goals or len(set(goals)) != len(goals):
    raise ValueError(f'need one or more distinct goals, got {list(goals)}.')
  for goal in goals:
    tasks.parse_elements(goal)
  return tuple(goals)


def from_trajectory(goals: tuple[str, ...], episodes: int, trajectory) -> Evaluation:
  """The Evaluation of rollouts whose batch axes flatten to goals x episodes, goal-major."""
  trajectory = jax.device_get(trajectory)
  shape = (len(goals), episodes)
  final = lambda x: x[..., -1].reshape(shape)
  return Evaluation(goals, final(trajectory.step_completion), final(trajectory.success) > 0,
                    trajectory.completed[..., -1, :].reshape(shape + (len(tasks.ELEMENTS),)),
                    trajectory.nan_physics.sum(axis=-1).reshape(shape),
                    trajectory.observations[..., -1, :tasks.NQ].reshape(shape + (tasks.NQ,)))


def summarize(evaluation: Evaluation) -> dict:
  """Overall, per-goal and per-element rates (per element: over the episodes whose goal has it)."""
  per_goal = {goal: {'success': float(evaluation.success[g].mean()),
                     'step_completion': float(evaluation.step_completion[g].mean())}
              for g, goal in enumerate(evaluation.goals)}
  asked = np.stack([tasks.element_mask(goal) for goal in evaluation.goals])  # [G, 7]
  per_element = {}
  for i, element in enumerate(tasks.ELEMENTS):
    if asked[:, i].any():
      per_element[element] = float(evaluation.element_completion[asked[:, i], :, i].mean())
  return {'success': float(evaluation.success.mean()),
          'step_completion': float(evaluation.step_completion.mean()),
          'episodes': int(evaluation.success.size),
          'nan_steps': int(evaluation.nan_steps.sum()),
          'per_goal': per_goal, 'per_element': per_element}


def markdown_table(results: Mapping[str, dict], goals: Sequence[str]) -> str:
  """Markdown of `summarize`d results per agent: one row per goal (and one for all), one column per
  agent; cells are success % / step completion, empty where an agent was not evaluated on that goal."""
  agents = list(results)
  header = '| goal | ' + ' | '.join(agents) + ' |\n|' + '---|' * (1 + len(agents)) + '\n'

  def cell(summary):
    return f"{summary['success'] * 100:.0f} / {summary['step_completion']:.2f}" if summary else ''

  rows = [('**all evaluated goals**', [results[a] for a in agents])]
  rows += [(goal, [results[a]['per_goal'].get(goal) for a in agents]) for goal in goals]
  return header + ''.join(f'| {name} | ' + ' | '.join(cell(s) for s in summaries) + ' |\n' for name, summaries in rows)


def success_count(summary: Mapping) -> int:
  """The successful episodes behind a `summarize`d success rate."""
  return round(summary['success'] * summary['episodes'])


LEAD_COUNTS = ('successes', 'episodes', 'reference_successes', 'reference_episodes')


def lead_from_counts(successes: int, episodes: int, reference_successes: int, reference_episodes: int) -> dict:
  """The counts (LEAD_COUNTS) and the one-sided Fisher p-value that the first leads (success_lead_p_value)."""
  counts = (successes, episodes, reference_successes, reference_episodes)
  return dict(zip(LEAD_COUNTS, counts)) | {'p': success_lead_p_value(*counts)}


def success_lead(summary: Mapping, reference: Mapping) -> dict:
  """`summary`'s successes against `reference`'s, both `summarize`d on the same goals and resets
  (lead_from_counts)."""
  return lead_from_counts(success_count(summary), summary['episodes'], success_count(reference), reference['episodes'])


def pooled_lead(leads: Sequence[Mapping]) -> dict:
  """Several `success_lead`s, e.g. one per training seed, as one with their episodes pooled. The test
  then takes every episode as an independent draw: a spread between seeds beyond the episodes' own
  is not in its p-value."""
  return lead_from_counts(*(sum(lead[name] for lead in leads) for name in LEAD_COUNTS))


def lead_text(lead: Mapping) -> str:
  """A `success_lead` in words: '7 of 30 against 2 of 17, p = 0.14'."""
  return (f"{lead['successes']} of {lead['episodes']} against {lead['reference_successes']} of "
          f"{lead['reference_episodes']}, p = {lead['p']:.2g}")


def leads_markdown(leads: Mapping[str, dict], reference: str) -> str:
  """A markdown section listing `success_lead`s over the agent named `reference`."""
  return f'\n## Success lead over {reference} (one-sided Fisher exact test, the same resets)\n\n' + ''.join(
      f'- {name}: {lead_text(lead)}\n' for name, lead in leads.items())


def success_lead_p_value(successes: int, episodes: int, other_successes: int, other_episodes: int) -> float:
  """One-sided Fisher exact test that the first agent succeeds more often than the other: the
  probability, were their success rates equal, that the first would get at least `successes` of the
  combined successes (the hypergeometric tail, exact in integers). Episodes are pooled over seeds, so
  a seed-to-seed spread beyond the episodes' own is not in it."""
  counts = (successes, episodes, other_successes, other_episodes)
  if any(int(c) != c or c < 0 for c in counts) or successes > episodes or other_successes > other_episodes:
    raise ValueError(f'need counts 0 <= successes <= episodes, got {counts}.')
  total, drawn = successes + other_successes, episodes + other_episodes
  tail = sum(math.comb(total, k) * math.comb(drawn - total, episodes - k)
             for k in range(successes, min(total, episodes) + 1))
  return float(fractions.Fraction(tail, math.comb(drawn, episodes)))


def write_videos(env, agent: Agent, params, normalizers, goals: Sequence[str], num_steps: int, deterministic: bool,
                 directory: str, prefix: str, values: GoalValues | None = None) -> list[str]:
  """One episode per goal rendered as `<directory>/<prefix>_<goal>.gif` (every 2nd state; goal i's
  episode runs from the i-th key split from key 0, the same for every agent but not one of the
  evaluator's episodes); returns the paths. Needs an offscreen OpenGL platform (envs.kitchen.render)."""
  goals = tuple(goals)
  trajectory = agent_rollout(env, agent, params, normalizers, jax.random.split(jax.random.key(0), len(goals)),
                             jnp.asarray(goal_states(goals, values)), num_steps, deterministic=deterministic)
  paths = []
  # Observations carry the env's small observation noise (about 1e-3); close enough to draw.
  for goal, observations in zip(goals, np.asarray(trajectory.observations)):
    paths.append(os.path.join(directory, f'{prefix}_{goal}.gif'))
    render.write_gif(paths[-1], render.render_frames(env.model, observations[::2, :tasks.NQ]))
  return paths
