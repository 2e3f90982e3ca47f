"""A scripted, privileged expert for the kitchen: pure JAX, per-env phase machine, any backend.

Each element is manipulated the same way. The hand holds a pose fixed in the frame of the element's
handle site (taken from the reset scene): a grasp with open-then-closed fingers (slide, doors, kettle)
or a push with closed fingers beside a lever (knobs, switch). While manipulating, the expert drives a
*desired element state* from the current one toward the goal a little every step and moves the hand to
where its held pose would be at that desired state, found by forward kinematics of the model itself;
the element follows the hand. A per-element *press* offset, eased off near the goal, supplies the force
that a pushed lever or a pulled door needs, and integral action on grasped elements removes the
steady error of a loaded hand.

Phases per element: approach (a joint-space move to a pre-grasp posture solved once by IK, chosen far
from the joint limits), reach (Cartesian, to the held pose), close, manipulate, release, retreat, and
after a completed door that opens toward the robot (microwave, hinge cabinet) a joint-space move home,
toward the reset posture, so that the next approach does not sweep the opened door. An element that
is not complete after the retreat is tried again. Hand motion is damped-least-squares IK
on the end-effector site's Jacobian (forward-mode derivatives of MJX kinematics) with gravity
compensation from the gradient of the arm's potential energy; the result is expressed in the env's own
action space (velocity actions, [-1, 1]^9), so demos replay as actions.

The randomness that makes the play varied is drawn per demo from the expert's key: approach offsets,
grasp points, manipulation speed, short pauses between phases and an occasional retreat-and-retry.
Success rates and timings: BUILD_NOTES.md ("Scripted expert").
"""

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct
from mujoco import mjx

from envs.kitchen import env as kitchen_env
from envs.kitchen import model as kitchen_model
from envs.kitchen import tasks

# Version of the expert's motions, recorded in every play dataset's config: a resumed generation is
# refused across versions, so one dataset never mixes demos of two experts. 2 (2026-11-22): the
# microwave and hinge door are followed by a move home, the slide cabinet is approached from the front
# right.
VERSION = 2

_STEP = kitchen_env.ACTION_VELOCITY * kitchen_model.CONTROL_DT  # joint displacement per control step at action 1
_OPEN, _CLOSED = 0.04, 0.0
_LIMIT_MARGIN = 0.05  # rad kept from the arm's joint limits

# Phases of one element.
APPROACH, REACH, CLOSE, MANIPULATE, RELEASE, RETREAT, HOME = range(7)


# Gripper orientations (columns: site x, y, z axes in world; the fingers open along y, the gripper
# points along z). FORWARD is the reset pose's: pointing at the back wall (+y), fingers along world x,
# straddling the knob grips, the switch lever and the slide handle (pushed along x). LEFT and RIGHT
# point along -x and +x with the fingers along y, so a door handle pulled toward the robot (-y) bears
# on a finger instead of sliding out past the finger tips. DOWN points at the floor with the fingers
# along y, across the kettle's handle (a bar along x).
FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
LEFT = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
RIGHT = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
DOWN = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])


def _yawed(orientation: np.ndarray, angle: float) -> np.ndarray:
  """`orientation` turned by `angle` (rad) about the world's vertical."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ orientation


@dataclasses.dataclass(frozen=True)
class ElementMotion:
  site: str  # the handle's site; the hand's held pose is fixed in its frame
  orientation: np.ndarray  # gripper orientation (world) at the held pose, in the reset scene
  speed: float  # element coordinate change per control step while manipulating (rad or m)
  grasp_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # hand minus site at grasp (world, m, at reset)
  grip: bool = True  # grasp the handle with open fingers, then close; else push with closed fingers
  turn: bool = False  # the hand turns with the element (doors); else it keeps its orientation
  press: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the grasp offset while manipulating (pushing)
  approach: float = 0.10  # pre-grasp distance back along the gripper axis (m)
  home: bool = False  # once complete, a joint-space move toward the reset posture after the retreat


# Grasp offsets put the closed fingers beside the top of a knob's grip bar or the switch lever's tip, and
# keep the finger tips (5 cm past the end-effector site) off the panel behind a handle.
MOTIONS = {
    'bottom burner': ElementMotion('knob2_site', FORWARD, speed=0.08, grasp_offset=(-0.038, -0.035, 0.03), grip=False,
                                   press=(0.06, 0.0, 0.0)),
    'top burner': ElementMotion('knob4_site', FORWARD, speed=0.08, grasp_offset=(-0.038, -0.035, 0.03), grip=False,
                                press=(0.06, 0.0, 0.0)),
    'light switch': ElementMotion('light_site', FORWARD, speed=0.06, grasp_offset=(0.041, -0.02, 0.0), grip=False,
                                  press=(-0.06, 0.0, 0.0)),
    # Approached from the front right (gripper yawed 0.8 rad, pre-grasp 25 cm out): an opened hinge door's
    # handle stands 21 cm in front of the slide's, 2.5 cm to its left, and blocks a straight approach.
    'slide cabinet': ElementMotion('slide_site', _yawed(FORWARD, 0.8), speed=0.03, approach=0.25),
    'hinge cabinet': ElementMotion('hinge_site2', FORWARD, speed=0.06, press=(0.0, -0.05, 0.0), turn=True,
                                   home=True),
    # The microwave stands turned 0.3 rad toward the robot; the hand faces its door. Opened, the door
    # swings toward the robot with the hand on its front-left face, and a joint-space approach from there
    # to any other element swept it shut; the move home goes back and up, clear of it.
    'microwave': ElementMotion('microhandle_site', _yawed(FORWARD, 0.3), speed=0.05, grasp_offset=(0.0015, -0.005, 0.0),
                                press=(0.01, -0.03, 0.0), turn=True, home=True),
    'kettle': ElementMotion('kettle_site', DOWN, speed=0.03, press=(0.0, 0.02, 0.0)),
}


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
  gain: float = 0.4  # fraction of the task-space error corrected per control step
  integral_gain: float = 0.1  # of the summed position error, against steady loads on a grasped element
  max_integral: float = 0.3  # m
  damping: float = 0.05  # DLS damping (lambda)
  max_joint_step: float = 0.16  # rad per control step (action 1)
  max_hand_step: float = 0.08  # m of position error taken per step
  max_turn_step: float = 0.4  # rad of orientation error taken per step
  position_tolerance: float = 0.01  # m: grasp or retreat point reached
  lost_distance: float = 0.05  # m between the hand and its held pose at which a grasp counts as lost
  approach_noise: float = 0.02  # rad: uniform per-joint offset of the pre-grasp posture
  grasp_noise: float = 0.004  # m: uniform per-axis offset of the grasp point
  speed_range: tuple[float, float] = (0.7, 1.3)  # per-demo factor on manipulation speed
  max_pause: int = 2  # steps of a random pause between phases
  retry_probability: float = 0.1  # per element: release and retreat once midway, then start again
  close_steps: int = 4
  release_steps: int = 3
  phase_timeout: int = 60
  manipulate_timeout: int = 90
  retreat_timeout: int = 15
  home_timeout: int = 30  # the move home is cut short here: by then the hand is clear of the door

  def __post_init__(self):
    low, high = self.speed_range
    if not 0 < low <= high:
      raise ValueError(f'speed_range must satisfy 0 < low <= high, got {self.speed_range}.')
    if self.max_pause < 0 or not 0 <= self.retry_probability <= 1:
      raise ValueError(f'need max_pause >= 0 and retry_probability in [0, 1], got {self.max_pause} and '
                       f'{self.retry_probability}.')


@struct.dataclass
class ExpertState:
  plan: jax.Array  # int32 [K]: element indices (into tasks.ELEMENTS) in order
  index: jax.Array  # int32: position in the plan (K when done)
  phase: jax.Array  # int32
  timer: jax.Array  # int32: steps in this phase
  pause: jax.Array  # int32: remaining pause steps
  offset: jax.Array  # [7]: joint offset of this element's pre-grasp posture
  speed: jax.Array  # per-demo speed factor
  retry_at: jax.Array  # int32: manipulation step at which to let go once and start over (-1: never)
  grasp: jax.Array  # [3]: the grasp point in the site's frame
  integral: jax.Array  # [3]: summed hand position error while manipulating (m)
  key: jax.Array

  @property
  def done(self) -> jax.Array:
    return self.index >= self.plan.shape[-1]


def _vee(skew: jax.Array) -> jax.Array:
  return jnp.stack([skew[2, 1], skew[0, 2], skew[1, 0]])


def _cap(vector: jax.Array, norm: float) -> jax.Array:
  return vector * jnp.minimum(1.0, norm / jnp.maximum(jnp.linalg.norm(vector), 1e-9))


def _cap_abs(step: jax.Array, limit) -> jax.Array:
  """Scales a joint step (not each joint) to the speed limit, so the hand keeps its direction."""
  return step * jnp.minimum(1.0, limit / jnp.maximum(jnp.abs(step).max(), 1e-9))


def _orientation_error(current: jax.Array, target: jax.Array) -> jax.Array:
  """Rotation vector (world frame) that turns `current` toward `target` (small-angle form)."""
  return 0.5 * jnp.sum(jnp.cross(current.T, target.T), axis=0)


class Expert:
  """`init(key, plan) -> ExpertState`; `act(state, qpos) -> (action, state)`. Pure; jit/vmap-able."""

  def __init__(self, model: mujoco.MjModel, config: ExpertConfig = ExpertConfig()):
    self.config = config
    self._model = mjx.put_model(model)
    self._ee = model.site('end_effector').id
    motions = [MOTIONS[e] for e in tasks.ELEMENTS]
    self._sites = jnp.array([model.site(m.site).id for m in motions])
    self._orientation = jnp.asarray(np.stack([m.orientation for m in motions]), jnp.float32)
    self._speed = jnp.array([m.speed for m in motions], jnp.float32)
    self._grasp_offset = jnp.array([m.grasp_offset for m in motions], jnp.float32)
    press = jnp.array([m.press for m in motions], jnp.float32)
    self._grip = jnp.array([m.grip for m in motions])
    self._turn = jnp.array([m.turn for m in motions])
    self._approach = jnp.array([m.approach for m in motions], jnp.float32)
    self._home = jnp.array([m.home for m in motions])
    masks = np.zeros((len(tasks.ELEMENTS), tasks.NQ), bool)
    goal = np.zeros(tasks.NQ, np.float32)
    for i, element in enumerate(tasks.ELEMENTS):
      masks[i, list(tasks.ELEMENT_INDICES[element])] = True
      goal[list(tasks.ELEMENT_INDICES[element])] = tasks.ELEMENT_GOALS[element]
    self._masks, self._goal = jnp.asarray(masks), jnp.asarray(goal)
    self._kettle = tasks.ELEMENTS.index('kettle')
    self._kettle_idx = np.array(tasks.ELEMENT_INDICES['kettle'])
    self._kp = jnp.asarray(model.actuator_gainprm[:tasks.ARM_DOF, 0], jnp.float32)
    self._weight = jnp.asarray(-model.body_mass[:, None] * model.opt.gravity[None], jnp.float32)  # [nbody, 3]
    self._home_posture = jnp.asarray(tasks.INIT_QPOS[:tasks.ARM_DOF], jnp.float32)
    limits = model.jnt_range[:tasks.ARM_DOF]
    self._low = jnp.asarray(limits[:, 0] + _LIMIT_MARGIN, jnp.float32)
    self._high = jnp.asarray(limits[:, 1] - _LIMIT_MARGIN, jnp.float32)
    # Pre-grasp postures from random starts around the reset posture; grasp postures from those, so
    # that reaching in is a short joint-space move within one IK branch.
    # The hand holds each element at a fixed pose in its site's frame, taken from the reset state.
    reset = self._kinematics(jnp.asarray(tasks.INIT_QPOS, jnp.float32))
    site_mat = reset.site_xmat[self._sites]
    self._hold_rot = jnp.einsum('eji,ejk->eik', site_mat, self._orientation)
    self._hold_offset = jnp.einsum('eji,ej->ei', site_mat, self._grasp_offset)
    self._press = jnp.einsum('eji,ej->ei', site_mat, press)
    starts = jax.random.uniform(jax.random.key(0), (len(tasks.ELEMENTS), 64, tasks.ARM_DOF), minval=self._low,
                                maxval=self._high)
    self._pre_grasp, self.posture_error = self._solve_postures(self._approach, starts)

  def _ik(self, jacobian: jax.Array, error: jax.Array, q: jax.Array, nominal: jax.Array) -> jax.Array:
    """Damped-least-squares joint step toward a task-space error, with a null-space pull toward a
    nominal posture. Joints that the step would push past their limits are frozen and the step is
    solved again without them, so the others take up the motion."""
    c = self.config

    def solve(jac):
      jjt = jac @ jac.T + c.damping**2 * jnp.eye(6)
      projector = jnp.eye(tasks.ARM_DOF) - jac.T @ jnp.linalg.solve(jjt, jac)
      return jac.T @ jnp.linalg.solve(jjt, error) + projector @ (0.05 * (nominal - q))

    dq = solve(jacobian)
    blocked = ((q + dq < self._low) & (dq < 0)) | ((q + dq > self._high) & (dq > 0))
    dq = jnp.clip(solve(jnp.where(blocked[None], 0.0, jacobian)), self._low - q, self._high - q)
    return _cap_abs(dq, c.max_joint_step)

  def _solve_postures(self, backoff: jax.Array, starts: jax.Array, iterations: int = 200):
    """Arm postures ([7 elements, 7]) that put the hand at each element's grasp pose at reset, backed
    off by `backoff` ([7], m) along the gripper axis: kinematic DLS iterations from each of `starts`
    ([7, seeds, 7]), each pulled in the null space toward its start. Of the solutions within 5 mm and
    0.3 rad of every joint limit (room to manipulate), the one nearest the reset posture wins, which keeps
    the joint-space moves between elements short. Also returns the remaining pose errors."""
    qpos = jnp.asarray(tasks.INIT_QPOS, jnp.float32)
    sites = self._kinematics(qpos).site_xpos[self._sites]
    targets = sites + self._grasp_offset - backoff[:, None] * self._orientation[:, :, 2]

    def solve(target_pos, target_mat, q):
      def iterate(q, _):
        pos, mat, jacobian, _, _ = self._hand(qpos.at[:tasks.ARM_DOF].set(q))
        error = jnp.concatenate([_cap(target_pos - pos, 0.1), _cap(_orientation_error(mat, target_mat), 0.5)])
        return q + self._ik(jacobian, 0.5 * error, q, start), None

      start = q
      q = jax.lax.scan(iterate, q, None, length=iterations)[0]
      pos, mat, _, _, _ = self._hand(qpos.at[:tasks.ARM_DOF].set(q))
      return q, jnp.linalg.norm(target_pos - pos) + 0.1 * jnp.linalg.norm(_orientation_error(mat, target_mat))

    q, error = jax.jit(jax.vmap(jax.vmap(solve, (None, None, 0))))(targets, self._orientation, starts)
    margin = jnp.minimum(q - self._low, self._high - q).min(axis=-1)
    travel = jnp.abs(q - qpos[:tasks.ARM_DOF]).max(axis=-1)
    best = jnp.argmin(jnp.where(error < 0.005, jnp.where(margin > 0.3, travel, 10.0 - margin), 20.0 + error), axis=1)
    rows = jnp.arange(len(tasks.ELEMENTS))
    return q[rows, best], np.asarray(error[rows, best])

  def init(self, key: jax.Array, plan: jax.Array) -> ExpertState:
    plan = jnp.asarray(plan, jnp.int32)
    if plan.ndim != 1:
      raise ValueError(f'plan must be a 1-d array of element indices, got shape {plan.shape}.')
    key, speed_key, element_key = jax.random.split(key, 3)
    low, high = self.config.speed_range
    zero = jnp.zeros((), jnp.int32)
    state = ExpertState(plan=plan, index=zero, phase=zero, timer=zero, pause=zero, offset=jnp.zeros(tasks.ARM_DOF),
                        speed=jax.random.uniform(speed_key, (), minval=low, maxval=high), retry_at=zero - 1,
                        grasp=jnp.zeros(3), integral=jnp.zeros(3), key=key)
    return self._new_element(state, element_key)

  def _new_element(self, state: ExpertState, key: jax.Array) -> ExpertState:
    """Draws the per-element randomness: pre-grasp offset, grasp point and whether to let go once midway."""
    c = self.config
    offset_key, grasp_key, retry_key, when_key = jax.random.split(key, 4)
    retry = jax.random.uniform(retry_key) < c.retry_probability
    element = state.plan[jnp.minimum(state.index, state.plan.shape[0] - 1)]
    grasp = self._hold_offset[element] + jax.random.uniform(grasp_key, (3,), minval=-c.grasp_noise, maxval=c.grasp_noise)
    return state.replace(
        phase=jnp.int32(APPROACH), timer=jnp.int32(0), grasp=grasp,
        offset=jax.random.uniform(offset_key, (tasks.ARM_DOF,), minval=-c.approach_noise, maxval=c.approach_noise),
        retry_at=jnp.where(retry, jax.random.randint(when_key, (), 2, 8), -1))

  def _kinematics(self, qpos: jax.Array) -> mjx.Data:
    return mjx.kinematics(self._model, mjx.make_data(self._model).replace(qpos=qpos))

  def _hand(self, qpos: jax.Array):
    """End-effector pose, its Jacobian over the arm joints ([6, 7]: linear; angular), the arm torque
    that holds the robot against gravity (gradient of its potential energy) and the kinematics."""
    def forward(q_arm):
      d = self._kinematics(qpos.at[:tasks.ARM_DOF].set(q_arm))
      potential = jnp.sum(self._weight * d.xipos)
      return (d.site_xpos[self._ee], d.site_xmat[self._ee], potential), d

    (pos, mat, _), linear, kinematics = jax.linearize(forward, qpos[:tasks.ARM_DOF], has_aux=True)
    d_pos, d_mat, d_potential = jax.vmap(linear)(jnp.eye(tasks.ARM_DOF, dtype=qpos.dtype))
    angular = jax.vmap(lambda dm: _vee(dm @ mat.T))(d_mat)
    return pos, mat, jnp.concatenate([d_pos.T, angular.T]), d_potential, kinematics

  def _desired(self, element: jax.Array, qpos: jax.Array, speed: jax.Array) -> jax.Array:
    """The element's coordinates one manipulation step from the current ones toward the goal."""
    mask = self._masks[element]
    hinged = jnp.where(mask, qpos + jnp.clip(self._goal - qpos, -speed, speed), qpos)
    # The kettle slides across the stove top to the goal burner (both burners are at the same height),
    # held upright by its handle: a lift would hang it on finger friction alone, and MuJoCo's soft
    # contacts let it creep down the pads.
    pos, goal = qpos[self._kettle_idx[:3]], self._goal[self._kettle_idx[:3]]
    quat = self._goal[self._kettle_idx[3:]]
    kettle = qpos.at[self._kettle_idx].set(jnp.concatenate([pos + _cap(goal - pos, speed), quat / jnp.linalg.norm(quat)]))
    return jnp.where(element == self._kettle, kettle, hinged)

  @staticmethod
  def in_transit(state: ExpertState) -> jax.Array:
    """Whether the next action is a joint-space move between elements (approach or home), where a
    perturbation costs no grasp."""
    return ~state.done & ((state.phase == APPROACH) | (state.phase == HOME))

  def act(self, state: ExpertState, qpos: jax.Array) -> tuple[jax.Array, ExpertState]:
    c = self.config
    qpos = jnp.asarray(qpos, jnp.float32)
    key, pause_key, element_key = jax.random.split(state.key, 3)
    element = state.plan[jnp.minimum(state.index, state.plan.shape[0] - 1)]
    site = self._sites[element]
    ee_pos, ee_mat, jacobian, gravity, now = self._hand(qpos)
    # The hand's position held in the element's frame: now, and at the next desired element state. On a
    # door the hand also turns with the element; elsewhere it keeps its orientation.
    site_mat = now.site_xmat[site]
    turn = self._turn[element]
    hold_pos = now.site_xpos[site] + site_mat @ state.grasp
    hold_mat = jnp.where(turn, site_mat @ self._hold_rot[element], self._orientation[element])
    desired = self._kinematics(self._desired(element, qpos, self._speed[element] * state.speed))
    desired_mat = desired.site_xmat[site]
    # The press eases off near the goal, so that a pushed knob does not overshoot it.
    distance = tasks.element_distances(qpos)[element]
    press = self._press[element] * jnp.clip(distance / 0.3, 0.2, 1.0)
    manipulate_pos = desired.site_xpos[site] + desired_mat @ (state.grasp + press)
    manipulate_mat = jnp.where(turn, desired_mat @ self._hold_rot[element], self._orientation[element])
    retreat = hold_pos - self._approach[element] * hold_mat[:, 2]

    phase = state.phase
    target_pos = jnp.select([phase == REACH, phase == MANIPULATE, phase == RETREAT],
                            [hold_pos, manipulate_pos, retreat], ee_pos)
    target_mat = jnp.where(phase == MANIPULATE, manipulate_mat, hold_mat)
    holding = (phase == CLOSE) | (phase == MANIPULATE) | ~self._grip[element]
    position_error = jnp.linalg.norm(target_pos - ee_pos)
    orientation_error = _orientation_error(ee_mat, target_mat)

    # Phase transitions.
    lost = jnp.linalg.norm(ee_pos - hold_pos) > c.lost_distance
    reached = (position_error < c.position_tolerance) & (jnp.linalg.norm(orientation_error) < 0.15)
    posture = jnp.clip(self._pre_grasp[element] + state.offset, self._low, self._high)
    at_posture = jnp.abs(posture - qpos[:tasks.ARM_DOF]).max() < 0.1
    at_home = jnp.abs(self._home_posture - qpos[:tasks.ARM_DOF]).max() < 0.1
    timed_out = state.timer >= c.phase_timeout
    complete = distance < tasks.THRESHOLD
    next_phase = jnp.select(
        [phase == APPROACH, phase == REACH, phase == CLOSE, phase == MANIPULATE, phase == RELEASE, phase == RETREAT,
         phase == HOME],
        [jnp.where(at_posture | timed_out, REACH, APPROACH),
         jnp.where(reached, CLOSE, jnp.where(timed_out, RETREAT, REACH)),
         jnp.where(state.timer >= c.close_steps, MANIPULATE, CLOSE),
         jnp.where((distance < 0.1) | lost | (state.timer >= c.manipulate_timeout) | (state.timer == state.retry_at),
                   RELEASE, MANIPULATE),
         jnp.where(state.timer >= c.release_steps, RETREAT, RELEASE),
         jnp.where(reached | (state.timer >= c.retreat_timeout),
                   jnp.where(self._home[element] & complete, HOME, APPROACH), RETREAT),
         jnp.where(at_home | (state.timer >= c.home_timeout), APPROACH, HOME)], phase).astype(jnp.int32)
    paused = state.pause > 0
    next_phase = jnp.where(paused | state.done, phase, next_phase)
    changed = next_phase != phase
    finished = changed & (next_phase == APPROACH) & (phase >= RETREAT) & complete
    new = state.replace(
        phase=next_phase,
        timer=jnp.where(changed, 0, state.timer + jnp.where(paused, 0, 1)),
        pause=jnp.where(changed, jax.random.randint(pause_key, (), 0, c.max_pause + 1), jnp.maximum(state.pause - 1, 0)),
        retry_at=jnp.where(changed & (phase == MANIPULATE), -1, state.retry_at),
        integral=jnp.where(changed | (phase != MANIPULATE) | ~self._grip[element], 0.0,
                           _cap(state.integral + target_pos - ee_pos, c.max_integral)),
        key=key)
    advanced = new.replace(index=state.index + 1)
    advanced = self._new_element(advanced, element_key).replace(pause=new.pause)
    new = jax.tree.map(lambda a, b: jnp.where(finished, a, b), advanced, new)

    # Errors are capped to what one linearized step can take.
    error = jnp.concatenate([_cap(target_pos - ee_pos, c.max_hand_step), _cap(orientation_error, c.max_turn_step)])
    error = (c.gain * error + c.integral_gain * jnp.concatenate([state.integral, jnp.zeros(3)])) * jnp.where(
        paused | state.done, 0.0, 1.0)
    dq = self._ik(jacobian, error, qpos[:tasks.ARM_DOF], self._pre_grasp[element])
    # The approach is a joint-space move to the posture solved once for each element; the move home, one
    # to the reset posture.
    to_posture = (jnp.where(phase == HOME, self._home_posture, posture) - qpos[:tasks.ARM_DOF]) * jnp.where(
        paused | state.done, 0.0, 1.0)
    to_posture = _cap_abs(to_posture, c.max_joint_step * jnp.minimum(state.speed, 1.0))
    dq = jnp.where((phase == APPROACH) | (phase == HOME), to_posture, dq)
    arm = (dq + gravity / self._kp) / _STEP
    finger_target = jnp.where(holding, _CLOSED, _OPEN)
    fingers = (finger_target - qpos[tasks.ARM_DOF:tasks.ROBOT_DOF]) / _STEP
    return jnp.clip(jnp.concatenate([arm, fingers]), -1.0, 1.0), new


def element_trials(env, expert: Expert, keys: jax.Array, elements: jax.Array, num_steps: int):
  """The expert doing one element at a time from the reset state: trial i does element `elements[i]`
  (index into tasks.ELEMENTS) toward that element's goal, from `keys[i]`. Returns actions
  [B, num_steps, 9], the env's success at each step [B, num_steps] and whether the expert finished its
  plan [B]. Pure: jit it with env, expert and num_steps bound."""
  goals = jnp.asarray(np.stack([tasks.goal_state([e]) for e in tasks.ELEMENTS]), jnp.float32)[elements]

  def trial(key, element, goal):
    env_key, expert_key = jax.random.split(key)
    carry = (env.reset(env_key, goal), expert.init(expert_key, element[None]))

    def step(carry, _):
      state, expert_state = carry
      action, expert_state = expert.act(expert_state, state.data.qpos)
      state = env.step(state, action)
      return (state, expert_state), (action, state.metrics['success'])

    (_, expert_state), (actions, success) = jax.lax.scan(step, carry, None, length=num_steps)
    return actions, success, expert_state.done

  return jax.vmap(trial)(keys, elements, goals)
