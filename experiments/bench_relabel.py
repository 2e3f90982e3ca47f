"""Relay relabeling: the device samplers against exact enumeration of Algorithms 2/3, in one run.

On a synthetic play-sized set (`--num_demos` demos of 400-700 steps, random states), it times:
  - the jitted samplers (`sample_low` at W_l, `sample_high` at W_h, and `sample_low` at W_h, the GCBC
    baseline's window): `--batch_size` tuples a call, a new key each call, blocked on the last result;
    after a warm-up, the median over `--repeats` runs of `--calls` calls. Also as the trainer uses
    them: `--scan_batches` batches drawn inside one jitted `lax.scan`, each materialised whole behind
    an optimization barrier (so XLA can neither drop nor narrow a gather), then touched cheaply;
  - the exact Python-loop enumeration, as the paper states it: for each demo, t and w, append the
    tuple's rows, then stack them into arrays; whole demos in order until `--loop_seconds` have
    passed, tuples/s = tuples / seconds;
  - `relabel.enumerate_low/high` (vectorised numpy) on the first `--numpy_demos` demos, for reference.
Memory: the device-resident demos, XLA's memory analysis of each compiled sampler (its temporaries do
not grow with W), the process peak RSS after the samplers ran (before any enumeration), and what a full
enumeration would hold. Prints a table and writes JSON.

  python experiments/bench_relabel.py --out=experiments/bench_relabel_cpu.json
"""

import json
import os
import platform
import resource
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from rpl_jax import relabel
from rpl_jax.data.demos import ACTION_DIM, OBS_DIM, Demo, PaddedDemos, pad_demos

_NUM_DEMOS = flags.DEFINE_integer('num_demos', 400, 'Synthetic demos.')
_MIN_LENGTH = flags.DEFINE_integer('min_length', 400, 'Shortest demo (steps); lengths are uniform.')
_MAX_LENGTH = flags.DEFINE_integer('max_length', 700, 'Longest demo (steps).')
_WINDOW_LOW = flags.DEFINE_integer('window_low', 30, 'W_l.')
_WINDOW_HIGH = flags.DEFINE_integer('window_high', 260, 'W_h.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4096, 'Tuples per sampler call.')
_CALLS = flags.DEFINE_integer('calls', 50, 'Sampler calls per timed run.')
_SCAN_BATCHES = flags.DEFINE_integer('scan_batches', 16, 'Batches per jitted lax.scan in the in-step timing.')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed runs per measurement; the median is reported.')
_LOOP_SECONDS = flags.DEFINE_float('loop_seconds', 3.0, 'Time budget of each Python-loop enumeration.')
_NUMPY_DEMOS = flags.DEFINE_integer('numpy_demos', 20, 'Demos enumerated by the vectorised numpy reference.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_OUT = flags.DEFINE_string('out', 'experiments/bench_relabel_cpu.json', 'JSON output path.')

MIB = 2**20
LEVELS = ('low', 'high')
METHOD = ('Samplers: jitted. Per call: a new key each call (keys split beforehand), blocked on the last of '
          '`calls` calls; median of `repeats` runs after a warm-up. In scan: `scan_batches` batches drawn '
          'inside one jitted lax.scan, each materialised whole (optimization_barrier) and touched cheaply; '
          'median of `repeats`. Python loop: for each demo in order, for t, for w, append the rows (s_t, a_t '
          'or s_{t+min(w, W_l)}, s_{t+w}), then np.stack them; whole demos until `loop_seconds` passed; '
          'tuples/s = tuples / seconds. numpy: relabel.enumerate_* on the first `numpy_demos` demos. Memory: '
          'XLA memory_analysis of each compiled sampler; peak RSS (ru_maxrss) read after the samplers, before '
          'any enumeration; full enumeration = tuples x row bytes (float32).')


def synthetic_demos(rng: np.random.Generator) -> list[Demo]:
  lengths = rng.integers(_MIN_LENGTH.value, _MAX_LENGTH.value + 1, size=_NUM_DEMOS.value)
  return [Demo(rng.normal(size=(t + 1, OBS_DIM)).astype(np.float32),
               rng.uniform(-1, 1, size=(t, ACTION_DIM)).astype(np.float32)) for t in lengths]


def median_seconds(run) -> float:
  """Median over `--repeats` timed calls of `run` (which blocks on its result), after a warm-up call."""
  run()
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_sampler(label: str, sample, demos: PaddedDemos, **static) -> dict:
  """Compile `sample(key, demos, **static)`, then time it per call and inside a scan."""
  keys = list(jax.random.split(jax.random.key(_SEED.value), _CALLS.value))  # iterating a key array dispatches
  start = time.perf_counter()
  memory = sample.lower(keys[0], demos, **static).compile().memory_analysis()
  compile_s = time.perf_counter() - start

  def calls():
    for key in keys:
      batch = sample(key, demos, **static)
    jax.block_until_ready(batch)

  @jax.jit
  def scanned(key, demos):
    def body(total, key):
      # The barrier makes every batch whole; a full sum would cost more than sampling on XLA:CPU.
      batch = jax.lax.optimization_barrier(sample(key, demos, **static))
      return total + sum(x[:, 0].sum() for x in batch), None
    return jax.lax.scan(body, 0.0, jax.random.split(key, _SCAN_BATCHES.value))[0]

  per_call = median_seconds(calls) / _CALLS.value
  in_scan = median_seconds(lambda: scanned(keys[0], demos).block_until_ready()) / _SCAN_BATCHES.value
  b = static['batch_size']
  row = {'label': label, **static, 'compile_s': compile_s, 'seconds_per_call': per_call,
         'tuples_per_s': b / per_call, 'seconds_per_batch_in_scan': in_scan, 'tuples_per_s_in_scan': b / in_scan}
  if memory is not None:
    row.update(temp_bytes=memory.temp_size_in_bytes, argument_bytes=memory.argument_size_in_bytes,
               output_bytes=memory.output_size_in_bytes)
  return row


def python_loop(demos: PaddedDemos, window_low: int, window: int, level: str) -> dict:
  """Algorithm 2 (level 'low') or 3 ('high') by the paper's loops, over whole demos until the budget is spent."""
  tuples, start = 0, time.perf_counter()
  for demo in range(len(demos.lengths)):
    length, observations, actions = int(demos.lengths[demo]), demos.observations[demo], demos.actions[demo]
    rows = []
    for t in range(length):
      for w in range(1, min(window, length - t) + 1):
        middle = actions[t] if level == 'low' else observations[t + min(w, window_low)]
        rows.append((observations[t], middle, observations[t + w]))
    tuples += len([np.stack(column) for column in zip(*rows)][0])
    if time.perf_counter() - start >= _LOOP_SECONDS.value:
      break
  seconds = time.perf_counter() - start
  return {'demos': demo + 1, 'tuples': tuples, 'seconds': seconds, 'tuples_per_s': tuples / seconds}


def numpy_enumeration(demos: PaddedDemos, enumerate_fn, *windows: int) -> dict:
  subset = PaddedDemos(*(x[:_NUMPY_DEMOS.value] for x in demos))
  start = time.perf_counter()
  tuples = len(enumerate_fn(subset, *windows)[0])
  seconds = time.perf_counter() - start
  return {'demos': len(subset.lengths), 'tuples': tuples, 'seconds': seconds, 'tuples_per_s': tuples / seconds}


def main(argv):
  del argv
  config = relabel.RelabelConfig(window_low=_WINDOW_LOW.value, window_high=_WINDOW_HIGH.value)
  host = pad_demos(synthetic_demos(np.random.default_rng(_SEED.value)))
  relabel.check_windows(config, host.lengths)
  demos = jax.device_put(host)
  w_l, w_h, b = config.window_low, config.window_high, _BATCH_SIZE.value

  samplers = {
      'low': bench_sampler(f'sample_low W={w_l}', relabel.sample_low, demos, window=w_l, batch_size=b),
      'high': bench_sampler(f'sample_high W={w_l}/{w_h}', relabel.sample_high, demos, window_low=w_l,
                            window_high=w_h, batch_size=b),
      'low_at_window_high': bench_sampler(f'sample_low W={w_h}', relabel.sample_low, demos, window=w_h,
                                          batch_size=b),
  }
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

  lengths = host.lengths.astype(np.int64)
  tuples = {'low': int(relabel.tuple_counts(lengths, w_l).sum()), 'high': int(relabel.tuple_counts(lengths, w_h).sum())}
  row_bytes = {'low': (2 * OBS_DIM + ACTION_DIM) * 4, 'high': 3 * OBS_DIM * 4}
  loops = {level: python_loop(host, w_l, w, level) for level, w in zip(LEVELS, (w_l, w_h))}
  vectorised = {'low': numpy_enumeration(host, relabel.enumerate_low, w_l),
                'high': numpy_enumeration(host, relabel.enumerate_high, w_l, w_h)}
  speedups = {level: {'per_call': samplers[level]['tuples_per_s'] / loops[level]['tuples_per_s'],
                      'in_scan': samplers[level]['tuples_per_s_in_scan'] / loops[level]['tuples_per_s']}
              for level in LEVELS}
  memory = {
      'device_demo_bytes': sum(x.nbytes for x in demos),
      'full_enumeration_bytes': {level: tuples[level] * row_bytes[level] for level in LEVELS},
      'process_peak_rss_bytes_after_samplers': peak_rss,
      'sampler_temp_bytes': {r['label']: r.get('temp_bytes') for r in samplers.values()},
  }

  print(f'{len(lengths)} demos, {lengths.sum():,} steps; tuples: {tuples["low"]:,} (W_l={w_l}), '
        f'{tuples["high"]:,} (W_h={w_h}); {jax.devices()[0].device_kind}, {os.cpu_count()} cores')
  print(f"{'method':<32} {'tuples/s':>12} {'in scan':>12} {'temp MiB':>9}")
  for r in samplers.values():
    temp = '-' if r.get('temp_bytes') is None else f"{r['temp_bytes'] / MIB:.2f}"
    print(f"{r['label'] + f' B={b}':<32} {r['tuples_per_s']:>12,.0f} {r['tuples_per_s_in_scan']:>12,.0f} {temp:>9}")
  for level in LEVELS:
    loop, numpy_row = loops[level], vectorised[level]
    print(f"{f'python loop, {level}':<32} {loop['tuples_per_s']:>12,.0f}   "
          f"({loop['tuples']:,} tuples of {loop['demos']} demos in {loop['seconds']:.1f} s)")
    print(f"{f'numpy enumerate_{level}':<32} {numpy_row['tuples_per_s']:>12,.0f}   "
          f"({numpy_row['tuples']:,} tuples of {numpy_row['demos']} demos)")
  print('speedup over the python loop (target 100x): ' + ', '.join(
      f"{level} {s['per_call']:.0f}x per call, {s['in_scan']:.0f}x in scan" for level, s in speedups.items()))
  print(f"memory: demos on device {memory['device_demo_bytes'] / MIB:.1f} MiB; full enumeration would hold "
        f"{memory['full_enumeration_bytes']['low'] / MIB:,.0f} MiB (low), "
        f"{memory['full_enumeration_bytes']['high'] / MIB:,.0f} MiB (high); peak RSS {peak_rss / MIB:.0f} MiB")

  result = {
      'machine': {'platform': platform.platform(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
                  'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind},
      'flags': {f.name: f.value for f in (_NUM_DEMOS, _MIN_LENGTH, _MAX_LENGTH, _WINDOW_LOW, _WINDOW_HIGH, _BATCH_SIZE,
                                          _CALLS, _SCAN_BATCHES, _REPEATS, _LOOP_SECONDS, _NUMPY_DEMOS, _SEED)},
      'dataset': {'num_demos': len(lengths), 'steps': int(lengths.sum()), 'min_length': int(lengths.min()),
                  'max_length': int(lengths.max()), 'tuples': tuples},
      'samplers': samplers,
      'python_loop': loops,
      'numpy_enumeration': vectorised,
      'speedup_over_python_loop': speedups,
      'memory': memory,
      'method': METHOD,
  }
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
