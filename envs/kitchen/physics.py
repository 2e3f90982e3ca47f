"""Physics backends behind one interface: `init(qpos, qvel) -> data` and `step(data, ctrl) -> data`.

`step` advances one control period (`PhysicsConfig.substeps` physics steps with the control held).
Both are pure JAX-traceable functions of pytrees, so they run under `jit` and `vmap`:

- `mjx`: MJX-JAX on any JAX device; `data` is an `mjx.Data`.
- `cpu`: C MuJoCo on the same MjModel, batched over native threads by `mujoco.rollout`, reached
  from inside `jit` through `jax.pure_callback`; `data` is a `CpuData`. C MuJoCo silently resets an
  unstable simulation to qpos0; this backend reports that as a NaN state instead, so the env sees the
  same failure signal as on MJX.
"""

import atexit
import os
import threading
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import mujoco
import mujoco.rollout
import numpy as np
from flax import struct
from mujoco import mjx


BACKENDS = ('mjx', 'cpu')


class Physics(Protocol):
  substeps: int

  def init(self, qpos: jax.Array, qvel: jax.Array) -> Any: ...

  def step(self, data: Any, ctrl: jax.Array) -> Any: ...


class MjxPhysics:
  """MJX-JAX: the whole step is traced, so it vmaps and runs on any accelerator."""

  def __init__(self, model: mujoco.MjModel, substeps: int):
    self.substeps = substeps
    self._model = mjx.put_model(model)

  def init(self, qpos, qvel) -> mjx.Data:
    data = mjx.make_data(self._model).replace(qpos=qpos, qvel=qvel)
    return mjx.forward(self._model, data)

  def step(self, data: mjx.Data, ctrl) -> mjx.Data:
    data = data.replace(ctrl=ctrl)
    return jax.lax.fori_loop(0, self.substeps, lambda _, d: mjx.step(self._model, d), data)


@struct.dataclass
class CpuData:
  """The C backend's physics state between control steps (the model has no activations or mocap)."""
  time: jax.Array
  qpos: jax.Array
  qvel: jax.Array


class CpuPhysics:
  """C MuJoCo, one `mujoco.rollout` call per control step over all envs of the (flattened) batch."""

  def __init__(self, model: mujoco.MjModel, substeps: int, nthread: int):
    if model.na or model.nmocap or model.nplugin:
      raise ValueError('the C backend state carries time, qpos and qvel only; the model has more state.')
    self.substeps = substeps
    self._model = model
    self._rollout = mujoco.rollout.Rollout(nthread=nthread)
    # At interpreter exit, steps JAX has dispatched but not finished would call back into a finalizing
    # interpreter and abort it ("PyGILState_Release: thread state must be current"): finish them, then
    # stop the native thread pool. A step dispatched later still runs, on the calling thread.
    atexit.register(self._shutdown)
    self._data = [mujoco.MjData(model) for _ in range(nthread)]
    if mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS) != 1 + model.nq + model.nv:
      raise ValueError('unexpected full-physics state layout.')
    self._lock = threading.Lock()

  def init(self, qpos, qvel) -> CpuData:
    return CpuData(time=jnp.zeros(qpos.shape[:-1], qpos.dtype), qpos=qpos, qvel=qvel)

  def step(self, data: CpuData, ctrl) -> CpuData:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), data)
    return jax.pure_callback(self._host_step, shapes, data, ctrl, vmap_method='broadcast_all')

  def _shutdown(self) -> None:
    jax.block_until_ready(jax.live_arrays())
    with self._lock:
      self._rollout.close()
      self._rollout = None

  def _host_step(self, data: CpuData, ctrl: np.ndarray) -> CpuData:
    m = self._model
    batch_shape = np.shape(data.time)
    time = np.asarray(data.time, np.float64).reshape(-1, 1)
    qpos = np.asarray(data.qpos, np.float64).reshape(-1, m.nq)
    qvel = np.asarray(data.qvel, np.float64).reshape(-1, m.nv)
    ctrl = np.asarray(ctrl, np.float64).reshape(-1, 1, m.nu)
    initial = np.concatenate([time, qpos, qvel], axis=1)
    with self._lock:
      runner = self._rollout or mujoco.rollout.Rollout(nthread=0)
      states, _ = runner.rollout(m, self._data, initial, ctrl, nstep=self.substeps)
    final = states[:, -1]
    expected_time = time[:, 0] + self.substeps * m.opt.timestep
    # C MuJoCo resets an unstable simulation (time goes back to 0); a bad input is reset at once.
    diverged = (~np.isfinite(initial).all(axis=1) | ~np.isfinite(final).all(axis=1)
                | (np.abs(final[:, 0] - expected_time) > 0.5 * m.opt.timestep))
    final[diverged, 1:] = np.nan
    dtype = np.asarray(data.qpos).dtype
    return CpuData(
        time=final[:, 0].reshape(batch_shape).astype(dtype),
        qpos=final[:, 1:1 + m.nq].reshape(batch_shape + (m.nq,)).astype(dtype),
        qvel=final[:, 1 + m.nq:].reshape(batch_shape + (m.nv,)).astype(dtype))


def default_backend() -> str:
  """`mjx` on an accelerator, `cpu` (C MuJoCo) on a CPU host (batched MJX-JAX on CPU is ~40x slower)."""
  return 'cpu' if jax.default_backend() == 'cpu' else 'mjx'


def make_physics(model: mujoco.MjModel, backend: str, substeps: int, nthread: int | None = None) -> Physics:
  if backend == 'mjx':
    return MjxPhysics(model, substeps)
  if backend == 'cpu':
    return CpuPhysics(model, substeps, nthread or os.cpu_count() or 1)
  raise ValueError(f'unknown physics backend {backend!r}; choose from {BACKENDS}.')
