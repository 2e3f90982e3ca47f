"""Run logs: JSONL and TensorBoard metrics read back (TensorBoard's own EventAccumulator as the reader),
resume truncation, run_info.json, and the progress bar's rate, ETA and throttling on a fake clock."""

import io
import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from rpl_jax import logs


def _jsonl(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _scalars(tensorboard_dir):
  """{tag: [(step, value)]} as TensorBoard's loader sees the run."""
  acc = event_accumulator.EventAccumulator(tensorboard_dir, size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_round_trip_with_nesting_and_non_finite(tmp_path):
  with logs.MetricsLogger(str(tmp_path), phase='ril') as logger:
    logger.write(0, {'loss': np.float32(0.5), 'updates': 3, 'ok': True,
                     'per_element': {'kettle': jnp.asarray(0.25), 'slide': np.array(1.0)}})
    logger.write(np.int64(1), {'loss': float('nan'), 'grad_norm': float('inf'),
                               'per_element': {'kettle': 0.75, 'slide': 0.0}})
  records = _jsonl(tmp_path / 'metrics_ril.jsonl')
  assert [r.pop('time') > 0 for r in records] == [True, True]
  assert records == [
      {'step': 0, 'loss': 0.5, 'updates': 3, 'ok': True, 'per_element/kettle': 0.25, 'per_element/slide': 1.0},
      {'step': 1, 'loss': None, 'grad_norm': None, 'per_element/kettle': 0.75, 'per_element/slide': 0.0}]

  scalars = _scalars(str(tmp_path / 'tensorboard' / 'ril'))
  assert scalars['loss'][0] == (0, 0.5) and scalars['loss'][1][0] == 1 and math.isnan(scalars['loss'][1][1])
  assert scalars['grad_norm'] == [(1, math.inf)]
  assert scalars['updates'] == [(0, 3.0)] and scalars['ok'] == [(0, 1.0)]
  assert scalars['per_element/kettle'] == [(0, 0.25), (1, 0.75)]
  assert scalars['per_element/slide'] == [(0, 1.0), (1, 0.0)]


@pytest.mark.parametrize('scalars', [{'loss': np.zeros(2)}, {'name': 'x'}, {'step': 1.0}])
def test_rejects_non_scalars_and_reserved_names(tmp_path, scalars):
  with logs.MetricsLogger(str(tmp_path)) as logger, pytest.raises(ValueError):
    logger.write(0, scalars)


def test_resume_drops_what_a_killed_run_logged_after_the_checkpoint(tmp_path):
  workdir = str(tmp_path)
  with logs.MetricsLogger(workdir) as logger:
    for step in range(10):
      logger.write(step, {'loss': step, 'eval': {'success': -step}})
  with open(tmp_path / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.write('{"step": 10, "lo')  # the record a kill cut short
  with logs.MetricsLogger(workdir, resume_step=4) as logger:
    assert [r['step'] for r in _jsonl(tmp_path / 'metrics.jsonl')] == [0, 1, 2, 3, 4]
    for step in range(5, 10):
      logger.write(step, {'loss': 10 * step, 'eval': {'success': -10 * step}})

  records = _jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == list(range(10))
  assert [r['loss'] for r in records] == [0, 1, 2, 3, 4, 50, 60, 70, 80, 90]
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]
  assert len(os.listdir(tmp_path / 'tensorboard')) == 2
  expected = [(s, float(s if s <= 4 else 10 * s)) for s in range(10)]
  assert _scalars(str(tmp_path / 'tensorboard')) == {
      'loss': expected, 'eval/success': [(s, -v) for s, v in expected]}


def test_fresh_run_drops_everything_before(tmp_path):
  with logs.MetricsLogger(str(tmp_path)) as logger:
    logger.write(0, {'loss': 1.0})
    logger.write(1, {'loss': 2.0})
  with logs.MetricsLogger(str(tmp_path)) as logger:
    logger.write(0, {'loss': 3.0})
  assert [(r['step'], r['loss']) for r in _jsonl(tmp_path / 'metrics.jsonl')] == [(0, 3.0)]
  assert _scalars(str(tmp_path / 'tensorboard')) == {'loss': [(0, 3.0)]}


def test_run_info(tmp_path):
  info = logs.write_run_info(str(tmp_path / 'run'), extra={'config': {'lr': 1e-3}, 'seeds': np.arange(2)},
                             packages=('numpy', 'no-such-package-rpl'))
  with open(tmp_path / 'run' / logs.RUN_INFO, encoding='utf-8') as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(info, default=lambda a: a.tolist()))
  assert saved['packages'] == {'numpy': np.__version__, 'no-such-package-rpl': None}
  assert saved['devices'] and saved['device_count'] == len(saved['devices'])
  assert saved['backend'] == 'cpu' and saved['process_count'] == 1 and saved['process_index'] == 0
  assert saved['extra'] == {'config': {'lr': 1e-3}, 'seeds': [0, 1]}
  for key in ('python', 'platform', 'git', 'time', 'argv', 'hostname'):
    assert key in saved
  assert set(logs.PACKAGES) <= set(logs.write_run_info(str(tmp_path))['packages'])


def test_git_state_outside_a_checkout(tmp_path):
  assert logs.git_state(str(tmp_path)) == {'commit': None, 'dirty': None}


class _Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_rate_and_eta():
  clock, stream = _Clock(), io.StringIO()
  bar = logs.Progress(400, 'demos', unit='demos', per='min', stream=stream, clock=clock)
  clock.now += 120
  bar.update(100, rejected=7)
  assert bar.rate() == '50.0 demos/min'
  # 300 left at 50/min: 6 minutes
  assert bar.line() == 'demos [#####               ] 100/400 50.0 demos/min, 2:00 elapsed, ETA 6:00, rejected=7'
  clock.now += 3600
  bar.update(0, loss=0.123456)
  assert bar.line().endswith('1.6 demos/min, 1:02:00 elapsed, ETA 3:06:00, rejected=7, loss=0.1235')

  fast = logs.Progress(10_000, unit='steps', stream=stream, clock=clock)
  clock.now += 4
  fast.update(1000)
  assert fast.line() == '[##                  ] 1000/10000 250.0 steps/s, 0:04 elapsed, ETA 0:36'
  fast.update(9000)
  assert fast.line().endswith('ETA 0:00')
  slow = logs.Progress(10, stream=stream, clock=clock)
  assert slow.rate() == '? it/s' and slow.line().endswith('ETA ?')
  clock.now += 30
  slow.update()
  assert slow.rate() == '2.0 it/min'


def test_progress_log_lines_are_throttled():
  clock, stream = _Clock(), io.StringIO()
  with logs.Progress(25, 'work', interval=10, stream=stream, clock=clock) as bar:
    for _ in range(25):
      clock.now += 1
      bar.update()
  lines = stream.getvalue().split('\n')
  assert lines[-1] == '' and '\r' not in stream.getvalue()
  assert [re.search(r'(\d+)/25', line)[1] for line in lines[:-1]] == ['10', '20', '25']
  bar.close()
  assert len(stream.getvalue().split('\n')) == 4

  drawn = logs.Progress(2, interval=10, stream=stream, clock=clock)
  clock.now += 10
  drawn.update(2)
  drawn.close()  # the last update's line is the final state: no repeat
  assert len(stream.getvalue().split('\n')) == 5


def test_progress_redraws_one_line_on_a_terminal():
  clock, stream = _Clock(), _Terminal()
  with logs.Progress(3, stream=stream, clock=clock) as bar:
    clock.now += 1
    bar.update(postfix='a long value')
    clock.now += 1
    bar.update(postfix='b')
  draws = stream.getvalue().split('\r')[1:]
  assert len(draws) == 2 and stream.getvalue().endswith('\n') and stream.getvalue().count('\n') == 1
  assert len(draws[1].rstrip('\n')) == len(draws[0])  # padded over the longer first line
  assert draws[1].startswith('[#############       ] 2/3 ')  # close does not redraw an unchanged bar
