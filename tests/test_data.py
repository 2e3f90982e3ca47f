"""Demo datasets: exact round trips, padding, resumable atomic writes, every validation error naming
its file, and the D4RL reader on small synthetic HDF5 files."""

import dataclasses
import hashlib
import json
import os

import h5py
import numpy as np
import pytest

from rpl_jax.data import (SCHEMA_VERSION, DatasetError, DatasetWriter, Demo, load_d4rl, load_demos, load_padded,
                          pad_demos, read_metadata)
from rpl_jax.files import write_atomic

CONFIG = {'backend': 'cpu', 'horizon': 280, 'physics': {'timestep': 0.004, 'substeps': 20}, 'nthread': None}
WRITER = dict(config=CONFIG, backend='cpu', seed=7, demos_per_shard=3)
SHARD_SIZES = (3, 3, 2)


def random_demos(seed: int, n: int) -> list[Demo]:
  rng = np.random.default_rng(seed)
  demos = []
  for _ in range(n):
    t = int(rng.integers(1, 12))
    demos.append(Demo(rng.normal(size=(t + 1, 30)).astype(np.float32),
                      rng.uniform(-1, 1, size=(t, 9)).astype(np.float32)))
  return demos


def shard_demos(index: int) -> list[Demo]:
  return random_demos(index, SHARD_SIZES[index])


def write_shards(writer: DatasetWriter, indices) -> None:
  for i in indices:
    n = SHARD_SIZES[i]
    writer.write_shard(i, shard_demos(i), seeds=[100 * i + j for j in range(n)],
                       element_orders=[['microwave', 'kettle']] * n)


@pytest.fixture
def dataset(tmp_path):
  path = str(tmp_path / 'demos')
  write_shards(DatasetWriter(path, **WRITER), range(len(SHARD_SIZES)))
  return path


def expected_demos() -> list[Demo]:
  return [d for i in range(len(SHARD_SIZES)) for d in shard_demos(i)]


def assert_same(demos, expected):
  assert len(demos) == len(expected)
  for got, want in zip(demos, expected):
    for g, w in zip(got, want):
      assert g.dtype == np.float32 and g.shape == w.shape and g.tobytes() == w.tobytes()


def test_round_trip_is_exact(dataset):
  assert_same(load_demos(dataset), expected_demos())
  meta = read_metadata(dataset)
  assert meta['schema_version'] == SCHEMA_VERSION and meta['config'] == CONFIG
  assert (meta['backend'], meta['seed'], meta['demos_per_shard']) == ('cpu', 7, 3)
  assert [e['name'] for e in meta['shards']] == ['shard-00000.npz', 'shard-00001.npz', 'shard-00002.npz']
  assert [e['num_demos'] for e in meta['shards']] == list(SHARD_SIZES)
  assert meta['shards'][1]['seeds'] == [100, 101, 102]
  assert meta['shards'][2]['element_orders'] == [['microwave', 'kettle']] * 2
  for entry in meta['shards']:
    assert os.path.getsize(os.path.join(dataset, entry['name'])) == entry['size']
    with np.load(os.path.join(dataset, entry['name'])) as npz:
      assert sorted(npz.files) == ['actions', 'lengths', 'observations']  # no labels in the arrays
  assert sorted(os.listdir(dataset)) == ['metadata.json'] + [e['name'] for e in meta['shards']]  # no temp files


def test_written_files_get_a_plain_open_s_mode(dataset, tmp_path):
  """Atomic writes (shards, metadata, and every result file through rpl_jax.files) get the mode a plain
  open() gives in the same directory, not the temp file's 0o600; rewriting a file keeps its own mode."""
  reference = os.path.join(dataset, 'by-open.txt')
  with open(reference, 'w') as f:
    f.write('x')
  want = os.stat(reference).st_mode & 0o7777
  for name in ('metadata.json', 'shard-00000.npz'):
    assert os.stat(os.path.join(dataset, name)).st_mode & 0o7777 == want, name
  path = tmp_path / 'result.json'
  write_atomic(str(path), lambda f: f.write(b'1'))
  assert path.stat().st_mode & 0o7777 == want
  path.chmod(0o640)
  write_atomic(str(path), lambda f: f.write(b'2'))
  assert path.stat().st_mode & 0o7777 == 0o640 and path.read_text() == '2'


def test_config_from_dataclass(tmp_path):
  @dataclasses.dataclass(frozen=True)
  class Config:
    horizon: int = 280
    sizes: tuple = (1, 2)

  path = str(tmp_path / 'd')
  DatasetWriter(path, **{**WRITER, 'config': dataclasses.asdict(Config())})
  DatasetWriter(path, **{**WRITER, 'config': dataclasses.asdict(Config())}, resume=True)  # tuples compare as lists
  assert read_metadata(path)['config'] == {'horizon': 280, 'sizes': [1, 2]}


def test_padded(dataset):
  demos = expected_demos()
  padded = load_padded(dataset)
  lengths = [len(d.actions) for d in demos]
  t_max = max(lengths)
  assert padded.observations.shape == (len(demos), t_max + 1, 30) and padded.observations.dtype == np.float32
  assert padded.actions.shape == (len(demos), t_max, 9) and padded.actions.dtype == np.float32
  assert padded.lengths.dtype == np.int32 and padded.lengths.tolist() == lengths
  for i, (demo, t) in enumerate(zip(demos, lengths)):
    np.testing.assert_array_equal(padded.observations[i, :t + 1], demo.observations)
    np.testing.assert_array_equal(padded.observations[i, t + 1:], np.tile(demo.observations[-1], (t_max - t, 1)))
    np.testing.assert_array_equal(padded.actions[i, :t], demo.actions)
    assert not padded.actions[i, t:].any()
  with pytest.raises(DatasetError, match='empty'):
    pad_demos([])


# --- damaged datasets -----------------------------------------------------------------------------


def shard_path(dataset, index=1):
  return os.path.join(dataset, f'shard-{index:05d}.npz')


def relist(dataset, index=1):
  """Update a tampered shard's size and checksum in metadata, so that the checks past them run."""
  meta_path = os.path.join(dataset, 'metadata.json')
  with open(meta_path) as f:
    meta = json.load(f)
  with open(shard_path(dataset, index), 'rb') as f:
    data = f.read()
  meta['shards'][index].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
  with open(meta_path, 'w') as f:
    json.dump(meta, f)


def rewrite_shard(dataset, **changes):
  """Rewrite shard 1 with some arrays replaced (None: dropped) and relist it."""
  with np.load(shard_path(dataset)) as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays.update(changes)
  np.savez(shard_path(dataset), **{k: v for k, v in arrays.items() if v is not None})
  relist(dataset)


def flip_bytes(dataset):
  with open(shard_path(dataset), 'r+b') as f:
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0xFF]))


def truncate(dataset):
  os.truncate(shard_path(dataset), os.path.getsize(shard_path(dataset)) // 2)


def truncate_relisted(dataset):
  truncate(dataset)
  relist(dataset)


def nonfinite_observation(dataset):
  demos = shard_demos(1)
  obs = np.concatenate([d.observations for d in demos])
  obs[len(demos[0].observations) + 1, 4] = np.nan  # inside demo 1
  rewrite_shard(dataset, observations=obs)


def infinite_action(dataset):
  acts = np.concatenate([d.actions for d in shard_demos(1)])
  acts[-1, 0] = np.inf  # inside demo 2
  rewrite_shard(dataset, actions=acts)


def action_out_of_range(dataset):
  acts = np.concatenate([d.actions for d in shard_demos(1)])
  acts[0, 3] = 1.5
  rewrite_shard(dataset, actions=acts)


def wrong_obs_dim(dataset):
  obs = np.concatenate([d.observations for d in shard_demos(1)])
  rewrite_shard(dataset, observations=obs[:, :29])


def wrong_dtype(dataset):
  obs = np.concatenate([d.observations for d in shard_demos(1)])
  rewrite_shard(dataset, observations=obs.astype(np.float64))


def wrong_lengths(dataset):
  lengths = np.array([len(d.actions) for d in shard_demos(1)], np.int32)
  rewrite_shard(dataset, lengths=lengths + 1)


def extra_array(dataset):
  rewrite_shard(dataset, labels=np.zeros(3, np.int32))


def missing_array(dataset):
  rewrite_shard(dataset, lengths=None)


def pickled_array(dataset):
  rewrite_shard(dataset, lengths=np.array([1, 'a'], dtype=object))


@pytest.mark.parametrize('damage, message', [
    (flip_bytes, 'checksum'),
    (truncate, 'truncated'),
    (truncate_relisted, 'unreadable'),
    (lambda d: os.remove(shard_path(d)), 'missing'),
    (nonfinite_observation, 'demo 1: non-finite'),
    (infinite_action, 'demo 2: non-finite'),
    (action_out_of_range, r'demo 0: actions outside \[-1, 1\]'),
    (wrong_obs_dim, 'observations must have shape'),
    (wrong_dtype, 'observations must be float32'),
    (wrong_lengths, 'lengths do not match the arrays'),
    (extra_array, 'arrays must be exactly'),
    (missing_array, 'arrays must be exactly'),
    (pickled_array, 'unreadable'),
])
def test_damaged_shard_names_file(dataset, damage, message):
  damage(dataset)
  with pytest.raises(DatasetError, match=message) as error:
    load_demos(dataset)
  assert shard_path(dataset) in str(error.value)


def edit_metadata(dataset, edit):
  meta_path = os.path.join(dataset, 'metadata.json')
  with open(meta_path) as f:
    meta = json.load(f)
  edit(meta)
  with open(meta_path, 'w') as f:
    json.dump(meta, f)


@pytest.mark.parametrize('edit, message', [
    (lambda m: m.update(schema_version=SCHEMA_VERSION + 1), 'newer'),
    (lambda m: m.update(schema_version='1'), 'must be an integer'),
    (lambda m: m.update(format='other'), 'not an rpl_jax.demos dataset'),
    (lambda m: m.pop('config'), 'missing keys'),
    (lambda m: m['shards'][0].update(name='../x.npz'), 'does not match index'),
    (lambda m: m['shards'][0].update(seeds=[1]), 'seeds must be null or a list of 3'),
    (lambda m: m['shards'].reverse(), 'ascending'),
])
def test_bad_metadata_names_file(dataset, edit, message):
  edit_metadata(dataset, edit)
  with pytest.raises(DatasetError, match=message) as error:
    load_demos(dataset)
  assert os.path.join(dataset, 'metadata.json') in str(error.value)


def test_missing_or_invalid_metadata(dataset, tmp_path):
  meta_path = os.path.join(dataset, 'metadata.json')
  with open(meta_path, 'w') as f:
    f.write('{"format": "rpl_jax.demos", ')
  with pytest.raises(DatasetError, match='not valid JSON') as error:
    load_demos(dataset)
  assert meta_path in str(error.value)
  with pytest.raises(DatasetError, match='no dataset metadata'):
    load_demos(str(tmp_path))


# --- writing --------------------------------------------------------------------------------------


def test_never_overwritten_without_flag(dataset):
  before = read_metadata(dataset)
  with pytest.raises(DatasetError, match='already exists.*overwrite=True'):
    DatasetWriter(dataset, **WRITER)
  assert read_metadata(dataset) == before
  with open(os.path.join(dataset, 'notes.txt'), 'w') as f:
    f.write('mine')
  writer = DatasetWriter(dataset, **WRITER, overwrite=True)
  assert writer.written_shards() == frozenset() and load_demos(dataset) == []
  assert sorted(os.listdir(dataset)) == ['metadata.json', 'notes.txt']
  with pytest.raises(ValueError, match='at most one'):
    DatasetWriter(dataset, **WRITER, resume=True, overwrite=True)


def test_crash_mid_write_leaves_no_shard(tmp_path, monkeypatch):
  path = str(tmp_path / 'demos')
  writer = DatasetWriter(path, **WRITER)

  def crash(f, **arrays):
    f.write(b'PK\x03\x04 partial')
    raise KeyboardInterrupt

  monkeypatch.setattr(np, 'savez', crash)
  with pytest.raises(KeyboardInterrupt):
    writer.write_shard(0, shard_demos(0))
  assert sorted(os.listdir(path)) == ['metadata.json'] and read_metadata(path)['shards'] == []


def test_stray_shards_need_overwrite(tmp_path):
  (tmp_path / 'shard-00000.npz').write_bytes(b'junk')
  with pytest.raises(DatasetError, match='without metadata.json'):
    DatasetWriter(str(tmp_path), **WRITER)


@pytest.mark.parametrize('change', [{'seed': 8}, {'backend': 'mjx'}, {'demos_per_shard': 4},
                                    {'config': {**CONFIG, 'horizon': 100}}])
def test_resume_requires_matching_header(dataset, change):
  key = next(iter(change))
  with pytest.raises(DatasetError, match=f'cannot resume.*{key}'):
    DatasetWriter(dataset, **{**WRITER, **change}, resume=True)


def test_resume_skips_written_shards(tmp_path):
  path = str(tmp_path / 'demos')
  write_shards(DatasetWriter(path, **WRITER), [0, 2])
  # A crash after the shard's rename but before its listing leaves an unlisted file: not a written shard.
  # A crash before the rename leaves a temp file, which resuming removes; other files stay.
  for name, data in (('shard-00001.npz', b'half a shard'), ('.shard-00001.npzk3j_x9.tmp', b'half'),
                     ('notes.txt', b'mine')):
    with open(os.path.join(path, name), 'wb') as f:
      f.write(data)
  shard0 = open(os.path.join(path, 'shard-00000.npz'), 'rb').read()
  writer = DatasetWriter(path, **WRITER, resume=True)
  assert writer.written_shards() == {0, 2}
  assert sorted(os.listdir(path)) == ['metadata.json', 'notes.txt', 'shard-00000.npz', 'shard-00001.npz',
                                      'shard-00002.npz']
  write_shards(writer, [i for i in range(len(SHARD_SIZES)) if i not in writer.written_shards()])
  assert open(os.path.join(path, 'shard-00000.npz'), 'rb').read() == shard0
  assert_same(load_demos(path), expected_demos())
  with pytest.raises(DatasetError, match='shard-00001.npz.*already written'):
    writer.write_shard(1, shard_demos(1))


@pytest.mark.parametrize('demo, message', [
    (Demo(np.zeros((3, 30)), np.full((2, 9), np.nan)), 'non-finite'),
    (Demo(np.zeros((3, 30)), np.full((2, 9), 1.01)), r'outside \[-1, 1\]'),
    (Demo(np.zeros((3, 30)), np.zeros((3, 9))), 'T\\+1 observations'),
    (Demo(np.zeros((1, 30)), np.zeros((0, 9))), 'T >= 1'),
    (Demo(np.zeros((3, 31)), np.zeros((2, 9))), r'shape \[T\+1, 30\]'),
])
def test_writer_rejects_bad_demos(tmp_path, demo, message):
  path = str(tmp_path / 'demos')
  writer = DatasetWriter(path, **WRITER)
  with pytest.raises(DatasetError, match=message) as error:
    writer.write_shard(0, [random_demos(0, 1)[0], demo])
  assert 'shard-00000.npz: demo 1' in str(error.value)
  assert writer.written_shards() == frozenset() and sorted(os.listdir(path)) == ['metadata.json']


def test_writer_argument_errors(tmp_path):
  writer = DatasetWriter(str(tmp_path), **WRITER)
  with pytest.raises(ValueError, match='1 to 3 demos'):
    writer.write_shard(0, random_demos(0, 4))
  with pytest.raises(ValueError, match='one entry per demo'):
    writer.write_shard(0, random_demos(0, 2), seeds=[1])
  with pytest.raises(DatasetError, match='JSON-serialisable'):
    DatasetWriter(str(tmp_path / 'x'), **{**WRITER, 'config': {'f': object()}})


# --- D4RL -----------------------------------------------------------------------------------------


def write_d4rl(path, n=12, terminal_rows=(3, 8), timeout_rows=(7,), **overrides):
  """Rows encode their index: qpos[0] = row, goal[0] = -row, action[0] = row / 100."""
  rows = np.arange(n, dtype=np.float32)
  observations = np.zeros((n, 60), np.float32)
  observations[:, 0], observations[:, 30] = rows, -rows
  actions = np.zeros((n, 9), np.float32)
  actions[:, 0] = rows / 100
  data = dict(observations=observations, actions=actions, terminals=np.isin(rows, terminal_rows).astype(np.float32),
              timeouts=np.isin(rows, timeout_rows), rewards=np.zeros(n, np.float32))
  data.update(overrides)
  with h5py.File(path, 'w') as f:
    for key, value in data.items():
      if value is not None:
        f.create_dataset(key, data=value)
  return str(path)


def test_d4rl_splits_at_terminals_and_timeouts(tmp_path):
  # Episodes: rows 0-3 (terminal), 4-7 (timeout), 8 (terminal, one row: skipped), 9-11 (file end).
  result = load_d4rl(write_d4rl(tmp_path / 'kitchen.hdf5'))
  assert [d.observations[:, 0].tolist() for d in result.demos] == [[0, 1, 2, 3], [4, 5, 6, 7], [9, 10, 11]]
  for demo, goal in zip(result.demos, result.goals):
    t = len(demo.observations) - 1
    assert demo.observations.shape == (t + 1, 30) and demo.actions.shape == (t, 9)
    assert demo.observations.dtype == demo.actions.dtype == goal.dtype == np.float32
    np.testing.assert_array_equal(demo.actions[:, 0] * 100, demo.observations[:-1, 0])  # last action dropped
    np.testing.assert_array_equal(goal.shape, (t + 1, 30))
    np.testing.assert_array_equal(goal[:, 0], -demo.observations[:, 0])
  assert pad_demos(result.demos).lengths.tolist() == [3, 3, 2]
  converted = str(tmp_path / 'converted')
  DatasetWriter(converted, **WRITER).write_shard(0, result.demos)
  assert_same(load_demos(converted), result.demos)


def test_d4rl_trailing_terminal(tmp_path):
  result = load_d4rl(write_d4rl(tmp_path / 'k.hdf5', n=6, terminal_rows=(5,), timeout_rows=()))
  assert [len(d.actions) for d in result.demos] == [5]


@pytest.mark.parametrize('overrides, message', [
    (dict(timeouts=None), r"missing D4RL keys \['timeouts'\]"),
    (dict(observations=np.zeros((12, 59), np.float32)), r'observations must have shape \[N >= 1, 60\]'),
    (dict(actions=np.zeros((12, 8), np.float32)), r'actions must have shape \(12, 9\)'),
    (dict(terminals=np.zeros((12, 1))), r'terminals must have shape \(12,\)'),
    (dict(actions=np.full((12, 9), 2.0, np.float32)), 'clip_actions=True'),
    (dict(observations=np.full((12, 60), np.nan, np.float32)), r'episode 0 \(rows 0..3\): non-finite'),
])
def test_d4rl_errors_name_file(tmp_path, overrides, message):
  path = write_d4rl(tmp_path / 'bad.hdf5', **overrides)
  with pytest.raises(DatasetError, match=message) as error:
    load_d4rl(path)
  assert path in str(error.value)


def test_d4rl_clip_and_unreadable(tmp_path):
  path = write_d4rl(tmp_path / 'wide.hdf5', actions=np.full((12, 9), -1.5, np.float32))
  assert all((d.actions == -1).all() for d in load_d4rl(path, clip_actions=True).demos)
  not_hdf5 = tmp_path / 'not.hdf5'
  not_hdf5.write_bytes(b'not an hdf5 file')
  with pytest.raises(DatasetError, match='cannot read as HDF5') as error:
    load_d4rl(str(not_hdf5))
  assert str(not_hdf5) in str(error.value)
