"""Rendering: GIFs and contact sheets from synthetic frames (no OpenGL needed), a real offscreen render
of the kitchen, and the advice given when no OpenGL platform works.

MuJoCo picks its OpenGL platform when first imported (and this session imported it already), so the
real renders run in a subprocess with MUJOCO_GL set: osmesa when the variable is unset and libOSMesa
is installed."""

import ctypes.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from envs.kitchen import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numbered_frames(t: int, h: int = 6, w: int = 8) -> np.ndarray:
  """Frame i is filled with the value 10 * i."""
  return np.broadcast_to((10 * np.arange(t, dtype=np.uint8))[:, None, None, None], (t, h, w, 3)).copy()


def test_write_gif_is_an_animated_loop(tmp_path):
  path = str(tmp_path / 'demo.gif')
  render.write_gif(path, numbered_frames(5), fps=10)
  with Image.open(path) as gif:
    assert gif.n_frames == 5 and gif.size == (8, 6)
    assert gif.info['loop'] == 0 and gif.info['duration'] == 100
    gif.seek(3)
    assert np.array(gif.convert('RGB'))[0, 0, 0] == 30


def test_contact_sheet_takes_evenly_spaced_frames_per_row(tmp_path):
  rows = [numbered_frames(11), numbered_frames(3)]
  path = str(tmp_path / 'sheet.png')
  render.write_contact_sheet(path, rows, columns=3)
  sheet = np.array(Image.open(path))
  assert sheet.shape == (2 * 6, 3 * 8, 3)
  # First, middle and last frame of each row.
  assert sheet[::6, ::8, 0].tolist() == [[0, 50, 100], [0, 10, 20]]


def test_frame_checks():
  with pytest.raises(ValueError, match='uint8'):
    render.write_gif('unused.gif', numbered_frames(2).astype(np.float32))
  with pytest.raises(ValueError, match='one frame size'):
    render.contact_sheet([numbered_frames(2), numbered_frames(2, h=7)])
  with pytest.raises(ValueError, match='one frame size'):
    render.contact_sheet([])


def run_python(code: str, mujoco_gl: str | None, tmp_path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ('MUJOCO_GL', 'DISPLAY')}
  env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  if mujoco_gl:
    env['MUJOCO_GL'] = mujoco_gl
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)


def test_real_render_of_the_kitchen(tmp_path):
  mujoco_gl = os.environ.get('MUJOCO_GL') or ('osmesa' if ctypes.util.find_library('OSMesa') else None)
  result = run_python("""
      import numpy as np
      from envs.kitchen import build_model, render, tasks
      qpos = np.stack([tasks.INIT_QPOS, tasks.goal_state('microwave-slide')])
      np.save('frames.npy', render.render_frames(build_model(), qpos, 60, 80))
      """, mujoco_gl, tmp_path)
  if result.returncode and 'RenderError' in result.stderr:
    pytest.skip(f'no OpenGL platform (MUJOCO_GL={mujoco_gl}): {result.stderr.strip().splitlines()[-1]}')
  assert result.returncode == 0, result.stderr
  frames = np.load(tmp_path / 'frames.npy')
  assert frames.shape == (2, 60, 80, 3) and frames.dtype == np.uint8
  assert frames.std() > 10  # a scene, not a blank image
  assert np.abs(frames[0].astype(int) - frames[1]).mean() > 1  # the microwave door and slide cabinet moved


def test_no_opengl_says_how_to_fix_it(tmp_path):
  # Without a display GLFW cannot make a context: this is what a headless host without MUJOCO_GL gets.
  result = run_python("""
      from envs.kitchen import build_model, render
      render.check_gl(build_model())
      """, 'glfw', tmp_path)
  if result.returncode == 0:
    pytest.skip('GLFW made a context without a display (nothing to test here)')
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith('envs.kitchen.render.RenderError')
  for advice in ('MUJOCO_GL=osmesa', 'libosmesa6', 'MUJOCO_GL=egl', '--videos=0'):
    assert advice in message
