"""Where the jitted NPG update spends its time: a profiler trace, phases timed one by one, XLA's analyses.

On bench_npg.py's problem at one batch size (bench_npg's flags --seed, --repeats and --matmul_* apply
here too; --out defaults to experiments/profile_npg_cpu.json):
  - a jax.profiler trace of `--trace_calls` calls of the jitted `natural_gradient_update`, written
    under `--workdir` (open it with TensorBoard's profile plugin or xprof);
  - each phase jitted on its own and timed (best and median of --repeats, after a warm-up): the vanilla
    gradient (`policy_gradient`), the FVP linearisation (`fisher_vector_product`, returning its
    residuals), one Fisher-vector product, CG (`conjugate_gradient` on the linearised product), the
    step with its KL check (`line_search` from the update's direction and step size), the value fit
    (`fit_value`: mjrl's (128, 128) net, Adam 1e-3, `--value_epochs` x `--value_batch_size`), and
    the whole update; with each phase's FLOPs as executed (XLA's cost analysis, loop bodies times
    their trip counts, as bench_npg.py counts them) and its rate against the dense matmul's;
  - the compiled update's cost analysis (flops, transcendentals, bytes accessed) and memory analysis
    (argument, output, alias, temp and generated code sizes).
Prints a table and writes JSON.

  PYTHONPATH=. python experiments/profile_npg.py --workdir=/tmp/npg_trace
"""

import json
import os
import statistics

from absl import app
from absl import flags
import jax
import optax

import bench_npg  # experiments/bench_npg.py, beside this file
from rpl_jax import networks, npg

_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 56000, 'Batch size (samples).')
_FISHER_SUBSAMPLE = flags.DEFINE_integer('fisher_subsample', 0, 'NPGConfig.fisher_subsample.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/npg_trace', 'Directory the profiler trace is written under.')
_TRACE_CALLS = flags.DEFINE_integer('trace_calls', 3, 'Update calls inside the trace.')
_VALUE_EPOCHS = flags.DEFINE_integer('value_epochs', 2, 'fit_value epochs.')
_VALUE_BATCH_SIZE = flags.DEFINE_integer('value_batch_size', 64, 'fit_value minibatch size.')
FLAGS = flags.FLAGS
FLAGS.set_default('out', 'experiments/profile_npg_cpu.json')

MIB = 2**20


def phase(name: str, fn, *args) -> dict:
  """Compiles `fn` (jitted) on args and times it."""
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = bench_npg.timed(lambda: jax.block_until_ready(compiled(*args)), FLAGS.repeats)
  return {'phase': name, 'best_s': min(seconds), 'median_s': statistics.median(seconds),
          'xla_flops': compiled.cost_analysis().get('flops', 0.0)}


def main(argv):
  del argv
  config = npg.NPGConfig(fisher_subsample=_FISHER_SUBSAMPLE.value)
  policy = bench_npg.POLICY
  params, normalizer, batch = bench_npg.make_problem(_NUM_SAMPLES.value, FLAGS.seed)
  load_before = os.getloadavg()
  flops_per_s = bench_npg.matmul_flops_per_s()

  update = bench_npg.jit_update(config)
  compiled = update.lower(params, normalizer, batch).compile()
  _, info = jax.block_until_ready(compiled(params, normalizer, batch))
  with jax.profiler.trace(_WORKDIR.value):
    for step in range(_TRACE_CALLS.value):
      with jax.profiler.StepTraceAnnotation('npg_update', step_num=step):
        jax.block_until_ready(compiled(params, normalizer, batch))

  linearise = lambda params, normalizer, batch: npg.fisher_vector_product(
      policy, params, normalizer, *npg.fisher_samples(batch, config.fisher_subsample), config.damping,
      config.fisher_block_size)
  solve = lambda fvp, g: npg.conjugate_gradient(fvp, g, config.cg_iterations, config.cg_tolerance)
  fvp = jax.jit(linearise)(params, normalizer, batch)
  _, g = jax.jit(lambda params, normalizer, batch: npg.policy_gradient(policy, params, normalizer, batch))(
      params, normalizer, batch)
  x = jax.jit(solve)(fvp, g).x
  value_net = networks.make_value(bench_npg.OBS, bench_npg.GOAL)
  value_params = value_net.init(jax.random.key(1))
  optimizer = optax.adam(1e-3)
  returns = jax.random.normal(jax.random.key(2), batch.advantages.shape)
  flops = bench_npg.executed_flops(params, normalizer, batch, config, info)

  rows = [
      phase('gradient', lambda params, normalizer, batch: npg.policy_gradient(policy, params, normalizer, batch),
            params, normalizer, batch),
      phase('linearise', linearise, params, normalizer, batch),
      phase('product', lambda fvp, v: fvp(v), fvp, g),
      phase('cg', solve, fvp, g),
      phase('line search', lambda params, normalizer, batch, x, step: npg.line_search(
          policy, params, normalizer, batch, x, step, config), params, normalizer, batch, x, info.step_size),
      phase('update', update, params, normalizer, batch),
      phase('value fit', lambda params, state, normalizer, batch, returns, key: npg.fit_value(
          value_net, params, state, normalizer, batch.obs, batch.goal, returns, optimizer, _VALUE_EPOCHS.value,
          _VALUE_BATCH_SIZE.value, key), value_params, optimizer.init(value_params), normalizer, batch, returns,
            jax.random.key(3)),
  ]
  executed = {'gradient': rows[0]['xla_flops'], 'linearise': rows[1]['xla_flops'],
              'product': flops['per_product']['flops'], 'cg': flops['products'] * flops['per_product']['flops'],
              'line search': flops['candidates'] * flops['per_candidate']['flops'], 'update': flops['executed_flops']}
  for row in rows:
    if row['phase'] in executed:
      row['flops'] = executed[row['phase']]
      row['gflops_per_s'] = row['flops'] / row['best_s'] / 1e9
      row['of_matmul'] = row['flops'] / row['best_s'] / flops_per_s
  memory = compiled.memory_analysis()
  memory = {name: getattr(memory, f'{name}_size_in_bytes') for name in
            ('argument', 'output', 'alias', 'temp', 'generated_code')}
  load_after = os.getloadavg()

  print(f'{_NUM_SAMPLES.value} samples (Fisher: {_FISHER_SUBSAMPLE.value or "all"}), {os.cpu_count()} cores, '
        f'jax {jax.__version__}; dense matmul {flops_per_s / 1e9:.1f} GFLOP/s; load average {load_before[0]:.2f} '
        f'before, {load_after[0]:.2f} after; trace under {_WORKDIR.value}')
  print(f"{'phase':<12} {'best s':>8} {'median s':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'of matmul':>9}")
  for row in rows:
    rate = (f"{row['flops'] / 1e9:>7.2f} {row['gflops_per_s']:>8.1f} {row['of_matmul']:>9.2f}"
            if 'flops' in row else f"{'-':>7} {'-':>8} {'-':>9}")
    print(f"{row['phase']:<12} {row['best_s']:>8.4f} {row['median_s']:>9.4f} {rate}")
  parts = sum(row['best_s'] for row in rows if row['phase'] in ('gradient', 'linearise', 'cg', 'line search'))
  print(f"gradient + linearise + cg + line search: {parts:.3f} s; the update: {rows[5]['best_s']:.3f} s")
  analysis = flops['xla_cost_analysis']
  print(f"update: {flops['executed_flops'] / 1e9:.2f} GFLOP executed ({analysis['flops'] / 1e9:.2f} by XLA's count, "
        f"loop bodies once), {analysis['transcendentals'] / 1e6:.1f} M transcendentals, "
        f"{analysis['bytes accessed'] / MIB:.0f} MiB accessed")
  print(f"a product: {flops['per_product']['flops'] / 1e9:.2f} GFLOP, "
        f"{flops['per_product']['transcendentals']:.0f} transcendentals (0: the linearisation is reused)")
  print('update memory: ' + ', '.join(f'{name} {size / MIB:.1f} MiB' for name, size in memory.items()))

  result = {
      'machine': bench_npg.machine(load_before, load_after),
      'flags': {name: FLAGS[name].value for name in (
          'num_samples', 'fisher_subsample', 'workdir', 'trace_calls', 'value_epochs',
          'value_batch_size', 'repeats', 'matmul_size', 'matmul_repeats', 'seed')},
      'matmul_flops_per_s': flops_per_s,
      'info': {k: v.item() for k, v in info._asdict().items()},
      'phases': rows,
      'update_flops': flops,
      'update_memory_bytes': memory,
      'method': __doc__,
  }
  with open(FLAGS.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
