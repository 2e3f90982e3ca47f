"""The jitted NPG update against an mjrl-style PyTorch update and against the FLOP roofline, in one run.

The problem is the reference's (DESIGN.md section 3): a 60-64-64-9 tanh Gaussian policy (obs 30 + goal
30, identity normalizers, mjrl's init), `--sizes` samples of standard-normal inputs with on-policy
actions and whitened advantages, NPGConfig's defaults (10 CG iterations, damping 1e-4, delta 0.05),
and one row per `--fisher_subsamples` value. For each size it measures, side by side:
  - jax: `natural_gradient_update` jitted, compile time (lower + compile) on its own;
  - torch: experiments/npg_torch_reference.py on the same policy and batch, kept running as a
    subprocess (`--torch_python`, `--torch_threads`, `--torch_omp_wait_policy`), one per `--torch_fvp`
    mode. After a warm-up, the jitted updates and torch's take turns, one update at a time, for
    `--repeats` rounds; the best of each counts (the median is kept too);
  - the roofline: the FLOPs the update executes over the dense-matmul FLOP/s of this machine, measured
    in this run (a jitted float32 `--matmul_size`^2 matmul, best of `--matmul_repeats`, at the start
    and at the end; the faster). XLA's cost analysis counts a while loop's body once, so executed
    FLOPs = cost(update) + (CG iterations - 1) x cost(one product) + (line-search candidates - 2) x
    cost(one candidate), a marginal cost being the cost of two calls minus one, all counted with the
    Fisher products in one block of samples (NPGConfig.fisher_block_size = all: the same matmuls as
    the timed update's blocks, whose loop XLA would count once);
  - accuracy: the same update in float64 (jax x64): relative error of the float32 step; and the
    float32 jax step size and KL against torch's.
`--include_compile` adds the compile time to the jitted update's time in the speedups and the
roofline ratio. Prints a table and writes JSON.

  PYTHONPATH=. python experiments/bench_npg.py --out=experiments/bench_npg_cpu.json
"""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rpl_jax import networks, npg

_SIZES = flags.DEFINE_list('sizes', ['56000', '10000'], 'Batch sizes (samples): 200 envs x 280 steps, and 10k.')
_FISHER_SUBSAMPLES = flags.DEFINE_list('fisher_subsamples', ['0', '5600'],
                                       'NPGConfig.fisher_subsample values; those >= a size are skipped.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed updates per measurement, after a warm-up.')
_TORCH_PYTHON = flags.DEFINE_string('torch_python', '/tmp/torchvenv/bin/python',
                                    'Python with torch for the reference; empty to skip it.')
_TORCH_FVP = flags.DEFINE_list('torch_fvp', ['mjrl', 'retained'], 'Reference modes (npg_torch_reference --fvp).')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 2, 'torch.set_num_threads of the reference.')
_TORCH_OMP_WAIT_POLICY = flags.DEFINE_enum(
    'torch_omp_wait_policy', 'PASSIVE', ['PASSIVE', 'ACTIVE'],
    "The reference's OMP_WAIT_POLICY. On a shared machine torch's spinning OpenMP threads (ACTIVE) can make "
    'it 10x slower, which would flatter the jitted update.')
_INCLUDE_COMPILE = flags.DEFINE_bool('include_compile', False, 'Count compile time in the jitted update time.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'Square matmul that measures dense FLOP/s.')
_MATMUL_REPEATS = flags.DEFINE_integer('matmul_repeats', 10, 'Timed matmuls; the best counts.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_OUT = flags.DEFINE_string('out', 'experiments/bench_npg_cpu.json', 'JSON output path.')

OBS, GOAL, OUTPUT, HIDDEN = 30, 30, 9, (64, 64)
POLICY = networks.make_policy(OBS, GOAL, OUTPUT, networks.PolicyConfig(hidden=HIDDEN))
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'npg_torch_reference.py')


def make_problem(num_samples: int, seed: int):
  """(params, normalizer, batch): a fresh policy and an on-policy batch whose advantages reward
  actions near a fixed linear function of the inputs, so that the gradient is informative."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = POLICY.init(keys[0])
  normalizer = networks.PolicyNormalizer(*(networks.identity_normalizer(d) for d in (OBS, GOAL, OUTPUT)))
  obs = jax.random.normal(keys[1], (num_samples, OBS))
  goal = jax.random.normal(keys[2], (num_samples, GOAL))
  actions = POLICY.sample(params, normalizer, obs, goal, keys[3])
  target = 0.1 * jnp.concatenate([obs, goal], -1)[:, :OUTPUT]
  return params, normalizer, npg.NPGBatch(obs, goal, actions, npg.whiten(-jnp.sum((actions - target)**2, -1)))


def jit_update(config: npg.NPGConfig):
  return jax.jit(lambda params, normalizer, batch: npg.natural_gradient_update(POLICY, params, normalizer, batch,
                                                                               config))


def machine(load_before, load_after) -> dict:
  """The host, JAX and load averages around a measurement, for the JSON record."""
  return {'platform': platform.platform(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'load_average_before': load_before,
          'load_average_after': load_after}


def timed(run, repeats: int) -> list[float]:
  """Seconds of `repeats` calls of `run` (which blocks on its result), after a warm-up call."""
  run()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  return seconds


def matmul_flops_per_s() -> float:
  a = jax.random.normal(jax.random.key(0), (_MATMUL_SIZE.value,) * 2)
  matmul = jax.jit(jnp.matmul)
  best = min(timed(lambda: matmul(a, a).block_until_ready(), _MATMUL_REPEATS.value))
  return 2 * _MATMUL_SIZE.value**3 / best


def cost(fn, *args) -> dict:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  return {key: analysis.get(key, 0.0) for key in ('flops', 'transcendentals', 'bytes accessed')}


def marginal_cost(call, *args) -> dict:
  """The cost of one more `call(i, *args)` (i = 0, 1 keep the calls apart): two calls minus one."""
  one = cost(lambda *args: call(0, *args), *args)
  two = cost(lambda *args: jax.tree.map(jnp.add, call(0, *args), call(1, *args)), *args)
  return {key: two[key] - one[key] for key in one}


def executed_flops(params, normalizer, batch, config: npg.NPGConfig, info: npg.NPGInfo) -> dict:
  """FLOPs of the update as run: XLA's count (loop bodies once) corrected by the loops' trip counts,
  with the Fisher products in one block so that no loop hides inside them."""
  config = dataclasses.replace(config, fisher_block_size=batch.obs.shape[0])
  flat, unravel = ravel_pytree(params)
  obs, goal = npg.fisher_samples(batch, config.fisher_subsample)

  def product(i, params, normalizer, obs, goal):
    return npg.fisher_vector_product(POLICY, params, normalizer, obs, goal, config.damping,
                                     config.fisher_block_size)(flat * (i + 1.0))

  def candidate(i, params, normalizer, batch):
    new = unravel(flat * (1.01 + 0.01 * i))
    old_log_prob = POLICY.log_prob(params, normalizer, batch.obs, batch.goal, batch.actions)
    kl = jnp.mean(POLICY.kl(params, new, normalizer, batch.obs, batch.goal))
    return kl + npg.surrogate(POLICY, new, normalizer, batch.obs, batch.goal, batch.actions, old_log_prob,
                              batch.advantages)

  update = cost(lambda *args: npg.natural_gradient_update(POLICY, *args, config), params, normalizer, batch)
  per_product = marginal_cost(product, params, normalizer, obs, goal)
  per_candidate = marginal_cost(candidate, params, normalizer, batch)
  products, candidates = int(info.cg_iterations), 1 + int(info.backtracks)
  return {'xla_cost_analysis': update, 'per_product': per_product, 'per_candidate': per_candidate,
          'products': products, 'candidates': candidates,
          'executed_flops': (update['flops'] + (products - 1) * per_product['flops']
                             + (candidates - 2) * per_candidate['flops'])}


def float64_error(config: npg.NPGConfig, problem, step32: np.ndarray, info32: npg.NPGInfo) -> dict:
  """The float32 update against the same update of the same problem in float64."""
  with jax.enable_x64(True):
    params, normalizer, batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), problem)
    new, info = jit_update(config)(params, normalizer, batch)
    step64 = np.asarray(ravel_pytree(new)[0] - ravel_pytree(params)[0])
  return {'step_relative_error': float(np.linalg.norm(step32 - step64) / np.linalg.norm(step64)),
          'step_size_ratio': float(info32.step_size) / float(info.step_size),
          'kl_ratio': float(info32.kl) / float(info.kl), 'cg_iterations_float64': int(info.cg_iterations)}


def start_torch(params, normalizer, batch, config: npg.NPGConfig, fvp: str, path: str) -> subprocess.Popen:
  """npg_torch_reference.py on this policy and batch, waiting for a line on stdin per update."""
  mlp = params['mlp']
  layers = sorted(mlp, key=lambda name: int(name.split('_')[-1]))
  inputs = jnp.concatenate([normalizer.obs.normalize(batch.obs), normalizer.goal.normalize(batch.goal)], -1)
  np.savez(path, num_layers=len(layers), log_std=np.asarray(params['log_std']),
           min_log_std=POLICY.config.min_log_std, inputs=np.asarray(inputs), actions=np.asarray(batch.actions),
           advantages=np.asarray(batch.advantages), step_size=config.step_size, damping=config.damping,
           cg_tolerance=config.cg_tolerance, cg_iterations=config.cg_iterations,
           **{f'kernel_{i}': np.asarray(mlp[name]['kernel']) for i, name in enumerate(layers)},
           **{f'bias_{i}': np.asarray(mlp[name]['bias']) for i, name in enumerate(layers)})
  env = {**os.environ, 'OMP_WAIT_POLICY': _TORCH_OMP_WAIT_POLICY.value}
  return subprocess.Popen([_TORCH_PYTHON.value, REFERENCE, f'--data={path}', f'--threads={_TORCH_THREADS.value}',
                           f'--fvp={fvp}'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def torch_update(process: subprocess.Popen) -> dict:
  process.stdin.write('\n')
  process.stdin.flush()
  return json.loads(process.stdout.readline())


def bench_size(num_samples: int, scratch: str) -> list[dict]:
  """One row per NPGConfig.fisher_subsample below num_samples, all against the same torch updates.
  After a warm-up of each, the configs' updates and torch's take turns, one at a time, `--repeats`
  rounds, so that load drifts hit them alike; the best counts."""
  configs = [npg.NPGConfig(fisher_subsample=subsample) for subsample in map(int, _FISHER_SUBSAMPLES.value)
             if subsample < num_samples]
  params, normalizer, batch = make_problem(num_samples, _SEED.value)
  rows, runs = [], []
  for config in configs:
    start = time.perf_counter()
    compiled = jit_update(config).lower(params, normalizer, batch).compile()
    rows.append({'num_samples': num_samples, 'fisher_subsample': config.fisher_subsample,
                 'compile_s': time.perf_counter() - start, 'seconds': []})
    runs.append(lambda compiled=compiled: jax.block_until_ready(compiled(params, normalizer, batch)))
  modes = _TORCH_FVP.value if _TORCH_PYTHON.value else []
  processes = {fvp: start_torch(params, normalizer, batch, npg.NPGConfig(), fvp, os.path.join(scratch, f'{fvp}.npz'))
               for fvp in modes}
  torch = {fvp: {'seconds': []} for fvp in modes}
  for run in runs:
    run()
  for process in processes.values():
    torch_update(process)
  for _ in range(_REPEATS.value):
    for row, run in zip(rows, runs):
      row['seconds'] += timed(run, 1)
    for fvp, process in processes.items():
      result = torch_update(process)
      torch[fvp] = {**result, 'seconds': torch[fvp]['seconds'] + [result['seconds']]}
  for process in processes.values():
    process.stdin.close()
    process.wait()

  for config, row, run in zip(configs, rows, runs):
    new, info = run()
    step = np.asarray(ravel_pytree(new)[0] - ravel_pytree(params)[0])
    flops = executed_flops(params, normalizer, batch, config, info)
    timed_s = min(row['seconds']) + (row['compile_s'] if _INCLUDE_COMPILE.value else 0.0)
    row.update(best_s=min(row['seconds']), median_s=statistics.median(row['seconds']), timed_s=timed_s,
               info={k: v.item() for k, v in info._asdict().items()}, flops=flops,
               float64=float64_error(config, (params, normalizer, batch), step, info), torch={})
    for fvp, result in torch.items():
      row['torch'][fvp] = {**result, 'best_s': min(result['seconds']), 'median_s': statistics.median(result['seconds']),
                           'speedup': min(result['seconds']) / timed_s,
                           'step_size_ratio': float(info.step_size) / result['step_size'],
                           'kl_ratio': float(info.kl) / result['kl']}
  return rows


def main(argv):
  del argv
  load_before = os.getloadavg()
  flops_per_s = [matmul_flops_per_s()]
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    for size in map(int, _SIZES.value):
      rows += bench_size(size, scratch)
  flops_per_s.append(matmul_flops_per_s())
  best = max(flops_per_s)
  for row in rows:
    row['roofline_s'] = row['flops']['executed_flops'] / best
    row['over_roofline'] = row['timed_s'] / row['roofline_s']
  load_after = os.getloadavg()

  print(f'{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}; dense matmul '
        f'{best / 1e9:.1f} GFLOP/s ({", ".join(f"{f / 1e9:.1f}" for f in flops_per_s)}); load average '
        f'{load_before[0]:.2f} before, {load_after[0]:.2f} after; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  compile_note = ' + compile' if _INCLUDE_COMPILE.value else ''
  torch_modes = _TORCH_FVP.value if _TORCH_PYTHON.value else []
  header = (f"{'samples':>8} {'fisher':>7} {'jax s' + compile_note:>10} {'median':>7} {'compile':>8} "
            f"{'GFLOP':>6} {'roofline s':>10} {'x roofline':>10} {'f32 err':>8}")  # f32 err: step vs float64
  print(header + ''.join(f" {'torch ' + fvp:>14} {'speedup':>8}" for fvp in torch_modes))
  for row in rows:
    line = (f"{row['num_samples']:>8} {row['fisher_subsample'] or 'all':>7} "
            f"{row['timed_s']:>10.3f} {row['median_s']:>7.3f} {row['compile_s']:>8.2f} "
            f"{row['flops']['executed_flops'] / 1e9:>6.1f} {row['roofline_s']:>10.3f} {row['over_roofline']:>10.2f} "
            f"{row['float64']['step_relative_error']:>8.1e}")
    print(line + ''.join(f" {row['torch'][fvp]['best_s']:>14.3f} {row['torch'][fvp]['speedup']:>7.1f}x"
                         for fvp in torch_modes))
  for row in rows:
    if not row['fisher_subsample']:
      for fvp, torch in row['torch'].items():
        print(f"{row['num_samples']} samples, torch {fvp}: jax/torch step size {torch['step_size_ratio']:.4f}, "
              f"KL {torch['kl_ratio']:.4f}")

  result = {
      'machine': machine(load_before, load_after),
      'flags': {f.name: f.value for f in (_SIZES, _FISHER_SUBSAMPLES, _REPEATS, _TORCH_PYTHON,
                                          _TORCH_FVP, _TORCH_THREADS, _TORCH_OMP_WAIT_POLICY, _INCLUDE_COMPILE,
                                          _MATMUL_SIZE, _MATMUL_REPEATS, _SEED)},
      'matmul_flops_per_s': flops_per_s,
      'rows': rows,
      'method': __doc__,
  }
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
