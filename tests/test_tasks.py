"""Element predicates, compound goals and step completion, at hand-built states."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from envs.kitchen import tasks


def test_goal_lists():
  assert len(tasks.COMPOUND_GOALS) == 17 and len(set(tasks.COMPOUND_GOALS)) == 17
  assert len(tasks.LATER_ORDERINGS) == 8
  # 'microwave-bottomknob-switch-slide' appears in both published lists.
  assert len(tasks.ALL_ORDERINGS) == 24
  for goal in tasks.ALL_ORDERINGS:
    assert len(tasks.parse_elements(goal)) == 4


def test_indices_cover_objects_once():
  flat = sorted(i for idx in tasks.ELEMENT_INDICES.values() for i in idx)
  assert len(flat) == len(set(flat)) and min(flat) >= tasks.ROBOT_DOF and max(flat) < tasks.NQ
  for element in tasks.ELEMENTS:
    assert len(tasks.ELEMENT_INDICES[element]) == len(tasks.ELEMENT_GOALS[element])


@pytest.mark.parametrize('element', tasks.ELEMENTS)
def test_each_element_at_goal_and_around_threshold(element):
  completion = lambda q: np.asarray(tasks.element_completion(jnp.asarray(q)))
  start = completion(tasks.INIT_QPOS)
  assert not start.any(), 'no element is complete at the reset state'
  at_goal = tasks.goal_state([element])
  expected = np.array([e == element for e in tasks.ELEMENTS])
  np.testing.assert_array_equal(completion(at_goal), expected)
  idx = list(tasks.ELEMENT_INDICES[element])
  direction = np.random.default_rng(0).normal(size=len(idx))
  direction /= np.linalg.norm(direction)
  for offset, complete in ((0.299, True), (0.301, False)):
    state = at_goal.copy()
    state[idx] += offset * direction
    assert completion(state)[tasks.ELEMENTS.index(element)] == complete, offset


def test_step_completion_brute_force():
  """Every subset of elements placed at goal, against every 4-element ordering: count by enumeration."""
  for goal in tasks.ALL_ORDERINGS[:6]:
    mask = jnp.asarray(tasks.element_mask(goal))
    wanted = set(tasks.parse_elements(goal))
    for r in range(len(tasks.ELEMENTS) + 1):
      for done in itertools.combinations(tasks.ELEMENTS, r):
        completed = tasks.element_completion(jnp.asarray(tasks.goal_state(done) if done else tasks.INIT_QPOS))
        assert int(tasks.step_completion(completed, mask)) == len(wanted & set(done))
        assert bool(tasks.all_complete(completed, mask)) == wanted.issubset(done)


def test_goal_mask_of_goal_state():
  for goal in tasks.COMPOUND_GOALS:
    np.testing.assert_array_equal(tasks.goal_mask(jnp.asarray(tasks.goal_state(goal))), tasks.element_mask(goal))


def test_batched_predicates():
  states = jnp.stack([jnp.asarray(tasks.goal_state(g)) for g in tasks.COMPOUND_GOALS])
  assert tasks.element_distances(states).shape == (17, 7)
  np.testing.assert_array_equal(tasks.step_completion(tasks.element_completion(states), tasks.goal_mask(states)), 4)


def test_unknown_and_bad_goals():
  with pytest.raises(ValueError, match="unknown kitchen element 'toaster'"):
    tasks.parse_elements('microwave-toaster')
  with pytest.raises(ValueError, match='repeats'):
    tasks.parse_elements(['kettle', 'kettle'])
  with pytest.raises(ValueError, match='shape'):
    tasks.goal_state('kettle', base=np.zeros(29))
  assert tasks.parse_elements(['bottom burner', 'switch']) == ('bottom burner', 'light switch')


def test_completed_values_are_medians_over_the_completed_states_only():
  """Brute force: per element, the median of its coordinates over exactly the states where it is
  within the threshold of its goal value; an element never complete has no entry."""
  rng = np.random.default_rng(0)
  base = np.repeat(tasks.INIT_QPOS[None], 400, axis=0)
  microwave, kettle = tasks.ELEMENT_INDICES['microwave'], list(tasks.ELEMENT_INDICES['kettle'])
  base[:, microwave[0]] = rng.uniform(-0.9, 0.0, 400)  # about half of them within 0.3 of -0.75
  base[:200, kettle] = np.asarray(tasks.ELEMENT_GOALS['kettle']) + rng.uniform(-0.05, 0.05, (200, 7))
  values = tasks.completed_values(base)
  assert set(values) == {'microwave', 'kettle'}
  inside = np.abs(base[:, microwave[0]] + 0.75) < 0.3
  assert values['microwave'] == pytest.approx((float(np.median(base[inside, microwave[0]])),))
  assert values['kettle'] == pytest.approx(tuple(np.median(base[:200][:, kettle], axis=0)))


def test_goal_state_places_elements_at_the_given_values():
  values = {'microwave': (-0.6,), 'slide cabinet': (0.12,)}
  state = tasks.goal_state('microwave-kettle-slide', values=values)
  assert state[22] == -0.6 and state[19] == 0.12
  np.testing.assert_allclose(state[list(tasks.ELEMENT_INDICES['kettle'])], tasks.ELEMENT_GOALS['kettle'])
  np.testing.assert_array_equal(np.delete(state, [19, 22, *tasks.ELEMENT_INDICES['kettle']]),
                                np.delete(tasks.INIT_QPOS, [19, 22, *tasks.ELEMENT_INDICES['kettle']]))
  np.testing.assert_array_equal(tasks.goal_mask(jnp.asarray(state)), tasks.element_mask('microwave-kettle-slide'))
