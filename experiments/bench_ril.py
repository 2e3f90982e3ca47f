"""RIL update throughput: the compiled K-update step against one jitted call per gradient update.

Both train the same two-level model on the same synthetic 400-demo set (lengths 400-700, like our
play data) with the same samplers and optimizer; they differ only in how many updates one call of
the jitted function runs. Throughput counts relabeled tuples consumed per second (both levels).
Prints a table and writes JSON.

  python experiments/bench_ril.py --out=experiments/bench_ril_cpu.json
"""

import json
import platform
import time

from absl import app
from absl import flags
import jax
import numpy as np

from envs.kitchen import ACTION_DIM, tasks
from rpl_jax import networks, relabel, train
from rpl_jax.data import Demo, pad_demos

_NUM_DEMOS = flags.DEFINE_integer('num_demos', 400, 'Synthetic demos.')
_UPDATES = flags.DEFINE_integer('updates_per_step', 100, 'K: updates per call of the compiled step.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Tuples per level per update.')
_CALLS = flags.DEFINE_integer('calls', 5, 'Timed calls of the compiled step (the loop runs as many updates).')
_OUT = flags.DEFINE_string('out', 'experiments/bench_ril_cpu.json', 'JSON output path.')


def _synthetic_demos(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return pad_demos([Demo(rng.normal(size=(t + 1, tasks.NQ)).astype(np.float32),
                         rng.uniform(-1, 1, size=(t, ACTION_DIM)).astype(np.float32))
                    for t in rng.integers(400, 701, size=n)])


def _time(step, state, demos, calls: int) -> tuple[float, object]:
  state, _ = step(state, demos)  # compile and warm up
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(calls):
    state, metrics = step(state, demos)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start, state


def main(argv):
  del argv
  demos = _synthetic_demos(_NUM_DEMOS.value)
  device_demos = train.device_demos(demos)
  scanned = train.BCConfig(batch_size=_BATCH.value, updates_per_step=_UPDATES.value)
  single = train.BCConfig(batch_size=_BATCH.value, updates_per_step=1)
  agent = train.make_agent(scanned)
  updates = _CALLS.value * _UPDATES.value
  tuples = updates * _BATCH.value * len(agent.levels)

  state = train.init_state(agent, scanned, demos, jax.random.key(0))
  scanned_s, _ = _time(train.jit_train_step(agent, scanned), state, device_demos, _CALLS.value)
  state = train.init_state(agent, single, demos, jax.random.key(0))
  single_s, _ = _time(train.jit_train_step(agent, single), state, device_demos, updates)

  result = {
      'what': 'RIL updates (both levels), compiled K-update step vs one jitted call per update, same run',
      'device': str(jax.devices()[0]), 'host': platform.node(), 'jax': jax.__version__,
      'num_demos': _NUM_DEMOS.value, 'batch_size': _BATCH.value, 'updates_per_step': _UPDATES.value,
      'updates_timed': updates, 'hidden': list(networks.PolicyConfig().hidden),
      'windows': [relabel.RelabelConfig().window_low, relabel.RelabelConfig().window_high],
      'scanned_seconds': scanned_s, 'single_seconds': single_s,
      'scanned_tuples_per_s': tuples / scanned_s, 'single_tuples_per_s': tuples / single_s,
      'speedup': single_s / scanned_s,
  }
  print(f"{'variant':<34} {'seconds':>8} {'tuples/s':>12}")
  print(f"{f'compiled step, K={_UPDATES.value}':<34} {scanned_s:>8.2f} {result['scanned_tuples_per_s']:>12.0f}")
  print(f"{'one jitted call per update':<34} {single_s:>8.2f} {result['single_tuples_per_s']:>12.0f}")
  print(f"speedup {result['speedup']:.1f}x over {updates} updates")
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
