"""Kitchen tasks: the seven elements, compound goals, goal states and completion predicates.

Element indices into the 30-d qpos, goal values and the 0.3 threshold are FrankaKitchen-v1's
(gymnasium_robotics/envs/franka_kitchen/kitchen_env.py, itself from D4RL). The compound goals are the
element orderings of the RPL demonstrations (DESIGN.md section 1). All predicates are pure `jnp`
functions of a `[..., 30]` state, so they batch and jit.
"""

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

NQ = 30  # 9 robot joints (7 arm, 2 fingers) + 21 object coordinates.
ROBOT_DOF = 9
ARM_DOF = 7  # the robot joints before the two fingers
THRESHOLD = 0.3

ELEMENTS = ('bottom burner', 'top burner', 'light switch', 'slide cabinet', 'hinge cabinet', 'microwave', 'kettle')
ELEMENT_INDICES = {
    'bottom burner': (11, 12),
    'top burner': (15, 16),
    'light switch': (17, 18),
    'slide cabinet': (19,),
    'hinge cabinet': (20, 21),
    'microwave': (22,),
    'kettle': (23, 24, 25, 26, 27, 28, 29),
}
ELEMENT_GOALS = {
    'bottom burner': (-0.88, -0.01),
    'top burner': (-0.92, -0.01),
    'light switch': (-0.69, -0.05),
    'slide cabinet': (0.37,),
    'hinge cabinet': (0.0, 1.45),
    'microwave': (-0.75,),
    'kettle': (-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06),
}
# Short names used in the RPL demonstration file names.
SHORT_NAMES = {
    'bottomknob': 'bottom burner', 'topknob': 'top burner', 'switch': 'light switch',
    'slide': 'slide cabinet', 'hinge': 'hinge cabinet', 'microwave': 'microwave', 'kettle': 'kettle',
}

# The 17 compound goals of the original RPL demonstrations (element order as demonstrated).
COMPOUND_GOALS = (
    'kettle-bottomknob-hinge-slide', 'kettle-bottomknob-switch-slide', 'kettle-switch-hinge-slide',
    'kettle-topknob-bottomknob-slide', 'kettle-topknob-switch-slide', 'microwave-bottomknob-hinge-slide',
    'microwave-bottomknob-switch-slide', 'microwave-kettle-bottomknob-hinge', 'microwave-kettle-bottomknob-slide',
    'microwave-kettle-hinge-slide', 'microwave-kettle-switch-slide', 'microwave-kettle-topknob-hinge',
    'microwave-kettle-topknob-switch', 'microwave-topknob-bottomknob-hinge', 'microwave-topknob-bottomknob-slide',
    'topknob-bottomknob-hinge-slide', 'topknob-bottomknob-switch-slide',
)
# Orderings that appear only in later recordings. 'microwave-bottomknob-switch-slide' is in both lists
# (DESIGN.md lists it twice), so ALL_ORDERINGS has 24 distinct entries.
LATER_ORDERINGS = (
    'kettle-bottomknob-switch-hinge', 'kettle-topknob-bottomknob-hinge', 'kettle-topknob-bottomknob-switch',
    'microwave-bottomknob-switch-slide', 'microwave-kettle-switch-hinge', 'microwave-switch-hinge-slide',
    'microwave-topknob-bottomknob-switch', 'microwave-topknob-switch-hinge',
)
ALL_ORDERINGS = tuple(dict.fromkeys(COMPOUND_GOALS + LATER_ORDERINGS))

# FrankaKitchen-v1's reset state (gymnasium_robotics kitchen_env.py, KitchenEnv.__init__).
INIT_QPOS = np.array([
    1.48388023e-01, -1.76848573e00, 1.84390296e00, -2.47685760e00, 2.60252026e-01, 7.12533105e-01,
    1.59515394e00, 4.79267505e-02, 3.71350919e-02, -2.66279850e-04, -5.18043486e-05, 3.12877220e-05,
    -4.51199853e-05, -3.90842156e-06, -4.22629655e-05, 6.28065475e-05, 4.04984708e-05, 4.62730939e-04,
    -2.26906415e-04, -4.65501369e-04, -6.44129196e-03, -1.77048263e-03, 1.08009684e-03, -2.69397440e-01,
    3.50383255e-01, 1.61944683e00, 1.00618764e00, 4.06395120e-03, -6.62095997e-03, -2.68278933e-04,
])


def _element(name: str) -> str:
  if name in ELEMENT_INDICES:
    return name
  if name in SHORT_NAMES:
    return SHORT_NAMES[name]
  raise ValueError(f'unknown kitchen element {name!r}; known: {list(ELEMENTS)} or short names {list(SHORT_NAMES)}.')


def parse_elements(goal: str | Sequence[str]) -> tuple[str, ...]:
  """Element names of a compound goal, given as 'microwave-kettle-...' or a sequence of names."""
  names = goal.split('-') if isinstance(goal, str) else list(goal)
  elements = tuple(_element(n) for n in names)
  if not elements:
    raise ValueError('a goal needs at least one element.')
  if len(set(elements)) != len(elements):
    raise ValueError(f'goal {goal!r} repeats an element.')
  return elements


def element_mask(goal: str | Sequence[str]) -> np.ndarray:
  """bool[7] over ELEMENTS: which elements the goal asks for."""
  chosen = set(parse_elements(goal))
  return np.array([e in chosen for e in ELEMENTS])


def goal_state(goal: str | Sequence[str], base: np.ndarray = INIT_QPOS,
               values: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
  """A 30-d goal state: `base` (default: the reset state) with the goal's elements at `values[element]`
  where given (e.g. the demos' `completed_values`), else at their goal values."""
  base = np.asarray(base, dtype=np.float64)
  if base.shape != (NQ,):
    raise ValueError(f'base state must have shape ({NQ},), got {base.shape}.')
  values = {**ELEMENT_GOALS, **(values or {})}
  state = base.copy()
  for element in parse_elements(goal):
    state[list(ELEMENT_INDICES[element])] = values[element]
  return state


def completed_values(states: np.ndarray) -> dict[str, tuple[float, ...]]:
  """Per element complete in some of `states` ([..., 30]): the median of its coordinates over those
  states, i.e. where the data leaves a completed element. Elements never complete are left out.

  FrankaKitchen's goal values are where the human demos left each element. A policy imitating other
  demos may never have seen them: our scripted play lets go of an element within 0.1 of its goal and
  ends 5 steps after the last one passes the 0.3 threshold, so the slide cabinet (always last) stops
  near 0.11, not 0.37, and goal states at the goal values lie far outside its training data.
  Completion is still judged against the goal values."""
  states = np.asarray(states, np.float64).reshape(-1, NQ)
  complete = np.asarray(element_completion(states))
  values = {}
  for i, element in enumerate(ELEMENTS):
    if complete[:, i].any():
      median = np.median(states[complete[:, i]][:, list(ELEMENT_INDICES[element])], axis=0)
      if not element_completion(goal_state([element], values={element: median}))[i]:
        raise ValueError(f'the median completed {element!r} coordinates {median} are not themselves complete.')
      values[element] = tuple(float(v) for v in median)
  return values


def element_distances(qpos: jnp.ndarray, target: jnp.ndarray | None = None) -> jnp.ndarray:
  """[..., 7]: L2 distance of each element's coordinates in `qpos` ([..., 30]) to its goal value, or
  to its coordinates in the state `target` ([..., 30]) when given."""
  def reference(element):
    return jnp.asarray(ELEMENT_GOALS[element]) if target is None else target[..., list(ELEMENT_INDICES[element])]
  return jnp.stack([jnp.linalg.norm(qpos[..., list(ELEMENT_INDICES[e])] - reference(e), axis=-1) for e in ELEMENTS],
                   axis=-1)


def element_completion(qpos: jnp.ndarray) -> jnp.ndarray:
  """[..., 7] bool: each element is within THRESHOLD of its goal value."""
  return element_distances(qpos) < THRESHOLD


def goal_mask(goal: jnp.ndarray) -> jnp.ndarray:
  """[..., 7] bool: the elements a 30-d goal state asks for, i.e. those it places at their goal value."""
  return element_completion(goal)


def step_completion(completed: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Number of the goal's elements (mask, [..., 7]) that are complete (completed, [..., 7])."""
  return jnp.sum(completed & mask, axis=-1)


def all_complete(completed: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Success: every element of the goal is complete."""
  return jnp.all(completed | ~mask, axis=-1)
