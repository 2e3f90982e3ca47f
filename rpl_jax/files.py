"""Crash-safe file writes shared by the dataset writer and the checkpointer."""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

# The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str, write: Callable[[BinaryIO], object]) -> None:
  """Call `write(file)` on a temp file beside `path`, fsync it, then os.replace it onto `path`, so that
  a crash leaves either the old file or the new one, never a partial one. The file gets the mode a plain
  `open(path, 'w')` would give it: an existing file's, else 0o666 less the umask (a temp file's own 0o600
  would hide datasets and results from the rest of a group)."""
  directory = os.path.dirname(path)
  mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_UMASK
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path), suffix='.tmp')
  try:
    os.fchmod(fd, mode)
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
