"""Crash-safe file writes shared by the dataset writer and the checkpointer."""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomic(path: str, write: Callable[[BinaryIO], object]) -> None:
  """Call `write(file)` on a temp file beside `path`, fsync it, then os.replace it onto `path`, so that
  a crash leaves either the old file or the new one, never a partial one."""
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path), suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)  # make the rename itself durable
  finally:
    os.close(dir_fd)
