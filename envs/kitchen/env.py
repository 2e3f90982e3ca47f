"""The kitchen env as pure functions: `reset(key, goal) -> State`, `step(State, action) -> State`.

Semantics follow FrankaKitchen-v1 (gymnasium-robotics 1.4): an action in [-1, 1]^9 is a joint
velocity of 2 * action; the position target is the observed robot qpos plus velocity times the 80 ms
control period, clipped to the robot's configured bounds, and held by the position actuators for one
control period; episodes last 280 steps. The observation is the 30-d qpos (optionally followed by the
29-d qvel); a goal is a 30-d state, and the elements it asks for are those it places at their goal
values (`tasks.goal_mask`). The reward counts goal elements completed for the first time at this
step, so an episode's return is its step completion, as with v1's `remove_task_when_completed`.

Bad input fails at trace time with a clear error; non-finite actions are zeroed and counted; a
non-finite physics state ends that env only (done, reward 0, counted) and keeps its pre-step state.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from envs.kitchen import model as kitchen_model
from envs.kitchen import physics as kitchen_physics
from envs.kitchen import tasks

ACTION_DIM = 9
ACTION_VELOCITY = 2.0  # joint velocity (rad/s; m/s for the fingers) that an action of 1 commands


@dataclasses.dataclass(frozen=True)
class KitchenConfig:
  backend: str = 'auto'  # 'auto' | 'mjx' | 'cpu'; auto picks mjx on an accelerator, cpu on a CPU host.
  physics: kitchen_model.PhysicsConfig = kitchen_model.PhysicsConfig()
  horizon: int = 280
  obs_velocities: bool = False
  # FrankaKitchen-v1 observation noise: uniform, amplitude ratio * franka_config.xml noise amplitudes.
  robot_noise_ratio: float = 0.01
  object_noise_ratio: float = 0.0005
  # Uniform noise added to the reset qpos of the objects and arm (0: v1's deterministic reset).
  reset_noise_scale: float = 0.0
  nthread: int | None = None  # C backend threads (default: all cores).

  def __post_init__(self):
    if self.backend not in ('auto',) + kitchen_physics.BACKENDS:
      raise ValueError(f"unknown backend {self.backend!r}; choose from {('auto',) + kitchen_physics.BACKENDS}.")
    if self.horizon < 1:
      raise ValueError(f'horizon must be positive, got {self.horizon}.')
    for name in ('robot_noise_ratio', 'object_noise_ratio', 'reset_noise_scale'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')

  @classmethod
  def from_dict(cls, config: dict[str, Any], **overrides) -> 'KitchenConfig':
    """The inverse of `dataclasses.asdict`, e.g. of the env config a demo dataset records in its metadata."""
    return cls(**{**config, 'physics': kitchen_model.PhysicsConfig(**config['physics']), **overrides})


@struct.dataclass
class State:
  data: Any  # the backend's physics state (mjx.Data or physics.CpuData)
  obs: jax.Array
  reward: jax.Array
  done: jax.Array
  metrics: dict[str, jax.Array]
  info: dict[str, jax.Array]


class KitchenEnv:
  """Holds the static model and config; `reset` and `step` are pure and jit/vmap-able."""

  def __init__(self, config: KitchenConfig = KitchenConfig()):
    self.config = config
    self.backend = kitchen_physics.default_backend() if config.backend == 'auto' else config.backend
    self.model = kitchen_model.build_model(config.physics)
    self.physics = kitchen_physics.make_physics(self.model, self.backend, config.physics.substeps, config.nthread)
    franka = kitchen_model.franka_config()
    self._pos_bounds = jnp.asarray(franka['pos_bound'][:ACTION_DIM], jnp.float32)
    self._vel_bounds = jnp.asarray(franka['vel_bound'][:ACTION_DIM], jnp.float32)
    self._qpos_noise, self._qvel_noise = (jnp.asarray(a, jnp.float32) for a in _noise_amplitudes(config))
    self._quaternion_adr = [int(self.model.jnt_qposadr[j]) + 3 for j in range(self.model.njnt)
                            if self.model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]

  @property
  def observation_size(self) -> int:
    return tasks.NQ + (self.model.nv if self.config.obs_velocities else 0)

  def reset(self, key: jax.Array, goal: jax.Array) -> State:
    goal = jnp.asarray(goal)
    if goal.shape != (tasks.NQ,):
      raise ValueError(f'goal must be a {tasks.NQ}-d state (vmap over envs for a batch), got shape {goal.shape}.')
    key, init_key, obs_key = jax.random.split(key, 3)
    qpos = jnp.asarray(tasks.INIT_QPOS, jnp.float32)
    qpos = qpos + self.config.reset_noise_scale * jax.random.uniform(init_key, qpos.shape, minval=-1.0, maxval=1.0)
    # v1's reset state has a kettle quaternion of norm 1.006; both engines would normalize it, differently.
    for adr in self._quaternion_adr:
      qpos = qpos.at[adr:adr + 4].set(qpos[adr:adr + 4] / jnp.linalg.norm(qpos[adr:adr + 4]))
    data = self.physics.init(qpos, jnp.zeros(self.model.nv, jnp.float32))
    mask = tasks.goal_mask(goal)
    completed = tasks.element_completion(data.qpos) & mask
    info = {'goal': goal.astype(jnp.float32), 'goal_mask': mask, 'completed': completed,
            'step': jnp.zeros((), jnp.int32), 'truncated': jnp.zeros((), bool), 'key': key}
    metrics = _metrics(completed, mask, diverged=jnp.zeros((), bool), nonfinite_actions=jnp.zeros((), jnp.int32))
    return State(data=data, obs=self._observe(data, obs_key), reward=jnp.zeros((), jnp.float32),
                 done=jnp.zeros((), bool), metrics=metrics, info=info)

  def step(self, state: State, action: jax.Array) -> State:
    action = _check_action(action)
    finite = jnp.isfinite(action)
    action = jnp.where(finite, action, 0.0)
    ctrl = self.ctrl(state.obs[:tasks.ROBOT_DOF], action)
    data = self.physics.step(state.data, ctrl)
    diverged = ~(jnp.isfinite(data.qpos).all() & jnp.isfinite(data.qvel).all())
    data = jax.tree.map(lambda new, old: jnp.where(diverged, old, new), data, state.data)

    key, obs_key = jax.random.split(state.info['key'])
    mask = state.info['goal_mask']
    completed = state.info['completed'] | (tasks.element_completion(data.qpos) & mask & ~diverged)
    newly = jnp.sum(completed & ~state.info['completed']).astype(jnp.float32)
    success = tasks.all_complete(completed, mask)
    t = state.info['step'] + 1
    truncated = (t >= self.config.horizon) & ~success & ~diverged
    info = dict(state.info, completed=completed, step=t, truncated=truncated, key=key)
    return State(data=data, obs=self._observe(data, obs_key), reward=jnp.where(diverged, 0.0, newly),
                 done=success | diverged | (t >= self.config.horizon),
                 metrics=_metrics(completed, mask, diverged, jnp.sum(~finite)), info=info)

  def ctrl(self, robot_qpos: jax.Array, action: jax.Array) -> jax.Array:
    """Position targets of the 9 actuators for a (finite) action from the observed robot qpos."""
    return position_target(robot_qpos, action, self._pos_bounds, self._vel_bounds)

  def _observe(self, data, key: jax.Array) -> jax.Array:
    qpos_key, qvel_key = jax.random.split(key)
    qpos = data.qpos + self._qpos_noise * jax.random.uniform(qpos_key, data.qpos.shape, minval=-1.0, maxval=1.0)
    if not self.config.obs_velocities:
      return qpos
    qvel = data.qvel + self._qvel_noise * jax.random.uniform(qvel_key, data.qvel.shape, minval=-1.0, maxval=1.0)
    return jnp.concatenate([qpos, qvel])


def _metrics(completed: jax.Array, mask: jax.Array, diverged: jax.Array, nonfinite_actions: jax.Array) -> dict:
  return {'step_completion': tasks.step_completion(completed, mask).astype(jnp.float32),
          'success': tasks.all_complete(completed, mask).astype(jnp.float32),
          'nan_physics': diverged.astype(jnp.float32),
          'nonfinite_actions': nonfinite_actions.astype(jnp.float32)}


def position_target(robot_qpos, action, pos_bounds, vel_bounds) -> jax.Array:
  """FrankaKitchen-v1's control: velocity 2 * clip(action, -1, 1), clipped to vel_bounds ([9, 2]);
  target = robot_qpos + velocity * 80 ms, clipped to pos_bounds ([9, 2])."""
  velocity = jnp.clip(ACTION_VELOCITY * jnp.clip(action, -1.0, 1.0), vel_bounds[:, 0], vel_bounds[:, 1])
  return jnp.clip(robot_qpos + velocity * kitchen_model.CONTROL_DT, pos_bounds[:, 0], pos_bounds[:, 1])


def corrected_action(action: jax.Array, displacement: jax.Array) -> jax.Array:
  """The action that, from an observed robot qpos displaced by `displacement` ([..., 9]), commands the
  position target that `action` commanded from the undisplaced one: action - displacement / (2 * 80 ms),
  clipped to [-1, 1]. Exact wherever neither that clip nor position_target's bounds bind (the velocity
  bounds, +-10 rad/s, never do). A demo state perturbed this way keeps its label's intent: move back
  toward where the demonstrator was going."""
  return jnp.clip(action - displacement / (ACTION_VELOCITY * kitchen_model.CONTROL_DT), -1.0, 1.0)


def _check_action(action) -> jax.Array:
  action = jnp.asarray(action)
  if not jnp.issubdtype(action.dtype, jnp.floating):
    raise TypeError(f'action must be floating point, got dtype {action.dtype}.')
  if action.shape != (ACTION_DIM,):
    raise ValueError(f'action must have shape ({ACTION_DIM},) per env (vmap over envs for a batch), '
                     f'got {action.shape}.')
  return action



def _noise_amplitudes(config: KitchenConfig) -> tuple[np.ndarray, np.ndarray]:
  """Per-coordinate observation-noise amplitudes, as FrankaKitchen-v1 indexes franka_config.xml:
  robot qpos/qvel rows 0-8, object qpos rows 8-28 and object qvel rows 9-28."""
  franka = kitchen_model.franka_config()
  pos_amp, vel_amp = franka['pos_noise_amp'], franka['vel_noise_amp']
  qpos = np.concatenate([config.robot_noise_ratio * pos_amp[:9], config.object_noise_ratio * pos_amp[8:8 + 21]])
  qvel = np.concatenate([config.robot_noise_ratio * vel_amp[:9], config.object_noise_ratio * vel_amp[9:9 + 20]])
  return qpos, qvel
