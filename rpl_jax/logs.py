"""Run logs: scalar metrics (JSONL + TensorBoard), the run's environment (run_info.json), and a progress bar
for long host loops.

A run directory holds

  metrics.jsonl      one JSON object per `MetricsLogger.write`: {"step", "time" (Unix seconds), scalars...};
                     nested dicts are flattened with '/', non-finite values are written as null (JSON has
                     no NaN or Infinity)
  tensorboard/       event files with the same scalars (non-finite ones kept as NaN/Inf), written with the
                     `tensorboard` package's protos and record writer, without TensorFlow
  run_info.json      Python, package versions, platform, devices, git commit, and what the caller adds

With a `phase` ('ril', 'rrf'), a logger writes metrics_<phase>.jsonl and tensorboard/<phase>/ instead, so
that phases with their own step counters resume independently.

Resume: a logger opened with `resume_step=S` keeps only the JSONL records with step <= S (rewritten
atomically), so a killed and resumed run ends with the metrics.jsonl of an uninterrupted one, apart from
"time". Event files cannot be cut, so the new event file starts with a SessionLog.START at step S + 1: on
it, TensorBoard's Python loaders (event_accumulator and the server's --load_fast=false path) drop every
point with step > S read so far, and the Rust data server (the default --load_fast) replaces a tag's points
from the first step that tag is written again (a tag that never is keeps its orphans there). Loaders read
event files in name order; the names hold the creation time in nanoseconds, so a resumed run's file is
read after the killed run's.
"""

import json
import math
import operator
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, TextIO

from absl import flags
from absl import logging
import jax
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from rpl_jax.files import write_atomic

RUN_INFO = 'run_info.json'
PACKAGES = ('jax', 'jaxlib', 'mujoco', 'mujoco-mjx', 'flax', 'optax', 'chex', 'orbax-checkpoint', 'numpy',
            'absl-py', 'ml-collections', 'tensorboard')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet_info_logs() -> None:
  """In a launcher's main: absl logging at WARNING unless --verbosity was given, since orbax logs every
  checkpoint save and restore at INFO."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


# --- metrics --------------------------------------------------------------------------------------


def _flatten(scalars: Mapping[str, Any], prefix: str = '') -> dict[str, bool | int | float]:
  """{'a': {'b': x}} -> {'a/b': x} with each value a Python scalar; raises on arrays with elements != 1."""
  flat = {}
  for key, value in scalars.items():
    name = prefix + key
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + '/'))
      continue
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in 'biuf':
      raise ValueError(f'metric {name!r} must be a real scalar, got {array.dtype} of shape {array.shape}.')
    flat[name] = array.item()
  return flat


def _json_value(value: bool | int | float) -> bool | int | float | None:
  return None if isinstance(value, float) and not math.isfinite(value) else value


def _kept_lines(path: str, resume_step: int | None) -> str:
  """The JSONL records with step <= resume_step (none for None); a line cut by a kill is dropped."""
  if resume_step is None or not os.path.exists(path):
    return ''
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')[:-1]  # the last piece is '' or a partial line
  return ''.join(line + '\n' for line in lines if json.loads(line)['step'] <= resume_step)


class MetricsLogger:
  """Appends scalars to `<workdir>/metrics.jsonl` and to TensorBoard under `<workdir>/tensorboard/`
  (metrics_<phase>.jsonl and tensorboard/<phase>/ with a `phase`).

  `resume_step`: the step of the checkpoint a run resumes from; what a killed run logged after it is
  dropped (the module docstring says how). None: a fresh run, which drops everything logged before.
  Each `write` is flushed to the OS, so a kill loses at most the record being written. Use from one
  process (e.g. jax.process_index() == 0).
  """

  def __init__(self, workdir: str, resume_step: int | None = None, phase: str | None = None):
    suffix = f'_{phase}' if phase else ''
    self.path = os.path.join(workdir, f'metrics{suffix}.jsonl')
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard', phase or '')
    os.makedirs(self.tensorboard_dir, exist_ok=True)
    kept = _kept_lines(self.path, resume_step)
    write_atomic(self.path, lambda f: f.write(kept.encode('utf-8')))
    self._jsonl = open(self.path, 'a', encoding='utf-8')
    name = f'events.out.tfevents.{time.time_ns():019d}.{socket.gethostname()}.{os.getpid()}'
    self._events = RecordWriter(open(os.path.join(self.tensorboard_dir, name), 'wb'))
    self._add_event(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    self._add_event(event_pb2.Event(wall_time=time.time(), step=0 if resume_step is None else resume_step + 1,
                                    session_log=start))

  def _add_event(self, event: event_pb2.Event) -> None:
    self._events.write(event.SerializeToString())
    self._events.flush()

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `scalars` (numbers, numpy/JAX scalars or 0-d arrays, nested dicts of them) at `step`."""
    step = operator.index(step)
    flat = _flatten(scalars)
    if {'step', 'time'} & flat.keys():
      raise ValueError('"step" and "time" are set by the logger; rename those metrics.')
    now = time.time()
    record = {'step': step, 'time': now, **{k: _json_value(v) for k, v in flat.items()}}
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    self._jsonl.flush()
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in flat.items()]
    self._add_event(event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=values)))

  def close(self) -> None:
    self._jsonl.close()
    self._events.close()

  def __enter__(self) -> 'MetricsLogger':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# --- run info -------------------------------------------------------------------------------------


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def git_state(directory: str = _REPO) -> dict[str, Any]:
  """{'commit': HEAD's hash, 'dirty': tracked files modified}; None values outside a git checkout."""
  def git(*args: str) -> str | None:
    try:
      result = subprocess.run(['git', *args], cwd=directory, capture_output=True, text=True, check=False)
    except OSError:  # no git
      return None
    return result.stdout.strip() if result.returncode == 0 else None

  commit = git('rev-parse', 'HEAD')
  status = git('status', '--porcelain', '--untracked-files=no') if commit else None
  return {'commit': commit, 'dirty': None if status is None else bool(status)}


def _to_json(value: Any) -> Any:
  """json.dumps's fallback for the values configs and seeds come in: arrays, numpy scalars, ConfigDicts."""
  if hasattr(value, 'to_dict'):
    return value.to_dict()
  if hasattr(value, '__array__'):
    return np.asarray(value).tolist()
  raise TypeError(f'{type(value).__name__} is not JSON-serialisable: {value!r}')


def write_run_info(workdir: str, extra: Mapping[str, Any] | None = None,
                   packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
  """Writes `<workdir>/run_info.json` (atomically) and returns what it holds: Python and package versions
  (None for a package not installed), platform, JAX devices and processes, git state, and `extra` (the
  config, seeds)."""
  info = {
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      'argv': sys.argv,
      'hostname': socket.gethostname(),
      'python': sys.version,
      'packages': {name: _version(name) for name in packages},
      'platform': platform.platform(),
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'device_count': jax.device_count(),
      'process_index': jax.process_index(),
      'process_count': jax.process_count(),
      'git': git_state(),
      'extra': dict(extra or {}),
  }
  text = json.dumps(info, indent=1, default=_to_json) + '\n'
  os.makedirs(workdir, exist_ok=True)
  write_atomic(os.path.join(workdir, RUN_INFO), lambda f: f.write(text.encode('utf-8')))
  return info


# --- progress -------------------------------------------------------------------------------------

_TTY_INTERVAL = 0.1  # seconds between redraws on a terminal
_LOG_INTERVAL = 30.0  # seconds between lines in a log file
_BAR_WIDTH = 20


def _format_duration(seconds: float) -> str:
  """'m:ss', or 'h:mm:ss' from an hour on; '?' when unknown."""
  if not math.isfinite(seconds):
    return '?'
  minutes, secs = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


class Progress:
  """A progress bar on stderr for a host loop of `total` units: done/total, rate, elapsed time and ETA.

  The rate is the average since the bar was made (so a first step's compile counts in it) and the ETA is
  the remaining units at that rate. `per` is the rate's time unit: 's', 'min', or 'auto' (per second from
  one unit a second on, else per minute). On a terminal the line is redrawn in place at most every 0.1 s;
  otherwise (a log file) a plain line is printed at most every `interval` seconds, and a last one on close.
  """

  def __init__(self, total: int, desc: str = '', unit: str = 'it', per: str = 'auto',
               interval: float | None = None, stream: TextIO | None = None,
               clock: Callable[[], float] = time.monotonic):
    if per not in ('s', 'min', 'auto'):
      raise ValueError(f"per must be 's', 'min' or 'auto', got {per!r}.")
    self.total, self.desc, self.unit, self.per = total, desc, unit, per
    self.done = 0
    self.postfix: dict[str, Any] = {}
    self._stream = stream or sys.stderr
    self._tty = self._stream.isatty()
    self._interval = interval if interval is not None else (_TTY_INTERVAL if self._tty else _LOG_INTERVAL)
    self._clock = clock
    self._start = self._last_print = clock()
    self._width = 0  # of the last line drawn on a terminal
    self._changed = True  # since the last draw; the first close draws even an untouched bar
    self._closed = False

  def rate(self) -> str:
    """E.g. '3.2 demos/min'; '?' before any time has passed."""
    elapsed = self._clock() - self._start
    if elapsed <= 0:
      return f'? {self.unit}/{"min" if self.per == "min" else "s"}'
    per_second = self.done / elapsed
    per = self.per if self.per != 'auto' else ('s' if per_second >= 1 else 'min')
    return f'{per_second * (60 if per == "min" else 1):.1f} {self.unit}/{per}'

  def line(self) -> str:
    elapsed = self._clock() - self._start
    remaining = max(self.total - self.done, 0)
    eta = 0.0 if remaining == 0 else (remaining * elapsed / self.done if self.done else math.inf)
    fraction = min(self.done / self.total, 1.0) if self.total else 1.0
    bar = '#' * round(_BAR_WIDTH * fraction)
    parts = [f'{self.desc} ' if self.desc else '', f'[{bar:<{_BAR_WIDTH}}] {self.done}/{self.total} ',
             f'{self.rate()}, {_format_duration(elapsed)} elapsed, ETA {_format_duration(eta)}']
    parts += [f', {k}={v:.4g}' if isinstance(v, float) else f', {k}={v}' for k, v in self.postfix.items()]
    return ''.join(parts)

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Adds `n` done units; `postfix` values (e.g. rejected=3) are shown after the ETA until replaced."""
    self.done += n
    self.postfix.update(postfix)
    self._changed = True
    now = self._clock()
    if now - self._last_print >= self._interval:
      self._last_print = now
      self._draw()

  def _draw(self) -> None:
    text = self.line()
    self._changed = False
    if self._tty:
      self._stream.write('\r' + text.ljust(self._width))  # pad over a longer previous line
      self._width = len(text)
    else:
      self._stream.write(text + '\n')
    self._stream.flush()

  def close(self) -> None:
    """Draws the final state unless the last draw showed it, and ends the terminal line; later calls do
    nothing."""
    if self._closed:
      return
    self._closed = True
    if self._changed:
      self._draw()
    if self._tty:
      self._stream.write('\n')
      self._stream.flush()

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
