"""The nearest-neighbour baseline (the paper's Fig. 6): for a commanded goal, pick the demo whose
achieved final state is closest to it, and replay that demo's actions open loop.

"Closest" is the sum over the goal's elements of the L2 distance between the demo's final
coordinates of that element and its value in the goal state (the other elements of a 30-d goal
state only hold their reset values, so they say nothing about what the goal asks for). After the
demo's last action the robot holds still until the episode ends.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import tasks
from rpl_jax import evaluation
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import open_loop_rollout


def goal_distances(demos: PaddedDemos, goal: jax.Array) -> jax.Array:
  """[N]: each demo's final-state distance to `goal` ([30]) over the goal's elements."""
  final = jnp.take_along_axis(jnp.asarray(demos.observations), jnp.asarray(demos.lengths)[:, None, None], axis=1)[:, 0]
  distances = tasks.element_distances(final[:, :tasks.NQ], goal)  # [N, 7]
  return jnp.sum(jnp.where(tasks.goal_mask(goal), distances, 0.0), axis=-1)


def nearest_demo(demos: PaddedDemos, goal: jax.Array) -> jax.Array:
  """The index of the demo whose final state is closest to `goal` (the first of ties)."""
  return jnp.argmin(goal_distances(demos, goal))


def make_evaluator(env, num_steps: int, values: evaluation.GoalValues | None = None):
  """`evaluate(demos, key, goals, episodes) -> evaluation.Evaluation`: per goal (the state
  evaluation.goal_states(goals, values)), its nearest demo's actions replayed from `episodes` resets
  (keys differ, so do reset and observation noise)."""
  def replay(demos, key, goal):
    index = nearest_demo(demos, goal)
    return open_loop_rollout(env, demos.actions[index], demos.lengths[index], key, goal, num_steps)

  rollout = jax.jit(jax.vmap(replay, in_axes=(None, 0, 0)))

  def evaluate(demos: PaddedDemos, key: jax.Array, goals: Sequence[str], episodes: int) -> evaluation.Evaluation:
    goals = evaluation.check_goals(goals, episodes)
    states = jnp.asarray(np.repeat(evaluation.goal_states(goals, values), episodes, axis=0))
    return evaluation.from_trajectory(goals, episodes, rollout(demos, jax.random.split(key, len(states)), states))

  return evaluate
