"""Offscreen rendering of kitchen trajectories: frames from a fixed free camera, animated GIFs and
contact sheets (Pillow).

MuJoCo picks its OpenGL platform when it is first imported, from MUJOCO_GL: on a headless host set
MUJOCO_GL=osmesa (software, package libosmesa6) or MUJOCO_GL=egl (libegl1 and a GPU driver) before
anything imports mujoco. `check_gl` fails early, with that advice, when no platform works.
"""

import warnings
from collections.abc import Sequence

import mujoco
import numpy as np
from PIL import Image

# A view from behind the robot's right shoulder that shows the arm, the stove knobs and the kettle,
# the microwave, the light switch and both wall cabinets.
CAMERA = dict(lookat=(-0.2, 0.45, 2.1), distance=2.4, azimuth=72.0, elevation=-15.0)
NO_GL_ADVICE = ('set MUJOCO_GL=osmesa (Debian/Ubuntu package libosmesa6) or MUJOCO_GL=egl (libegl1 and a GPU '
                'driver) before starting Python, or pass --videos=0 to skip rendering')


class RenderError(RuntimeError):
  """No OpenGL context could be created for offscreen rendering."""


def _renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
  with warnings.catch_warnings(record=True) as caught:  # GLFW reports a missing display as warnings
    warnings.simplefilter('always')
    try:
      return mujoco.Renderer(model, height, width)
    except Exception as e:  # mujoco.FatalError, or the platform library's own error
      details = '; '.join(dict.fromkeys([str(e)] + [str(w.message) for w in caught]))
      raise RenderError(f'cannot render offscreen: no working OpenGL platform ({details}). '
                        f'To fix: {NO_GL_ADVICE}.') from e


def check_gl(model: mujoco.MjModel) -> None:
  """Raise RenderError (with the fix) unless an offscreen OpenGL context can be created."""
  _renderer(model, 8, 8).close()


def _camera() -> mujoco.MjvCamera:
  camera = mujoco.MjvCamera()
  camera.type = mujoco.mjtCamera.mjCAMERA_FREE
  camera.lookat[:] = CAMERA['lookat']
  camera.distance, camera.azimuth, camera.elevation = CAMERA['distance'], CAMERA['azimuth'], CAMERA['elevation']
  return camera


def render_frames(model: mujoco.MjModel, qpos: np.ndarray, height: int = 240, width: int = 320) -> np.ndarray:
  """uint8 [T, H, W, 3]: the scene at each state of `qpos` ([T, nq]), from the fixed CAMERA."""
  qpos = np.asarray(qpos, np.float64)
  if qpos.ndim != 2 or qpos.shape[1] != model.nq:
    raise ValueError(f'qpos must have shape [T, {model.nq}], got {qpos.shape}.')
  data = mujoco.MjData(model)
  camera = _camera()
  frames = np.empty((len(qpos), height, width, 3), np.uint8)
  renderer = _renderer(model, height, width)
  # Shadows and reflections are off: they cost about 90% of a software-rendered frame.
  renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
  renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
  try:
    for t, q in enumerate(qpos):
      data.qpos[:] = q
      mujoco.mj_forward(model, data)
      renderer.update_scene(data, camera)
      renderer.render(out=frames[t])
  finally:
    renderer.close()  # else the GL context is torn down at interpreter exit, with tracebacks
  return frames


def _check_frames(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise ValueError(f'frames must be uint8 [T >= 1, H, W, 3], got {frames.dtype} {frames.shape}.')
  return frames


def write_gif(path: str, frames: np.ndarray, fps: float = 12.5) -> None:
  """An animated, looping GIF of `frames` (uint8 [T, H, W, 3]) at `fps` frames per second."""
  images = [Image.fromarray(f) for f in _check_frames(frames)]
  images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def contact_sheet(frame_rows: Sequence[np.ndarray], columns: int = 6) -> np.ndarray:
  """uint8 [rows * H, columns * W, 3]: `columns` evenly spaced frames (first and last included) of each
  row's frames (uint8 [T, H, W, 3], one row per demo; all rows of one frame size)."""
  rows = [_check_frames(f) for f in frame_rows]
  if not rows or len({f.shape[1:] for f in rows}) != 1:
    raise ValueError(f'need at least one row, all of one frame size; got sizes {[f.shape[1:] for f in rows]}.')
  sheet = [np.concatenate(f[np.linspace(0, len(f) - 1, columns).round().astype(int)], axis=1) for f in rows]
  return np.concatenate(sheet, axis=0)


def write_contact_sheet(path: str, frame_rows: Sequence[np.ndarray], columns: int = 6) -> None:
  """`contact_sheet(frame_rows, columns)` as a PNG."""
  Image.fromarray(contact_sheet(frame_rows, columns)).save(path)
