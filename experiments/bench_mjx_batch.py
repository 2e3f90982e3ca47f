"""Batched MJX-JAX physics throughput on the kitchen model for the installed JAX (used to bisect JAX).

Prints a table and writes JSON: physics steps/s of `vmap(scan(mjx.step))` per batch size, compile
time separately. Run it in one virtualenv per JAX version; BUILD_NOTES.md has the bisection.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import mujoco
from mujoco import mjx

from envs.kitchen import model as kitchen_model

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '4', '32'], 'Batch sizes to measure.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Physics steps per timed call (one lax.scan).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per batch size; the best is reported.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path (default: print only).')
_ITERATIONS = flags.DEFINE_integer('iterations', kitchen_model.PhysicsConfig.iterations, 'Solver iterations.')
_LS_ITERATIONS = flags.DEFINE_integer('ls_iterations', kitchen_model.PhysicsConfig.ls_iterations,
                                      'Solver line-search iterations.')


def measure(mx: mjx.Model, data: mjx.Data, batch: int, steps: int, repeats: int) -> dict:
  def physics_step(d, _):
    return mjx.step(mx, d), None

  run = jax.jit(jax.vmap(lambda d: jax.lax.scan(physics_step, d, None, length=steps)[0]))
  batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), data)
  start = time.perf_counter()
  out = jax.block_until_ready(run(batched))
  compile_s = time.perf_counter() - start
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(run(out))
    best = min(best, time.perf_counter() - start)
  return {'batch': batch, 'physics_steps_per_s': batch * steps / best, 'compile_and_first_call_s': compile_s,
          'finite': bool(jnp.isfinite(out.qpos).all())}


def main(argv):
  del argv
  physics = kitchen_model.PhysicsConfig(iterations=_ITERATIONS.value, ls_iterations=_LS_ITERATIONS.value)
  model = kitchen_model.build_model(physics)
  data = mujoco.MjData(model)
  mujoco.mj_resetDataKeyframe(model, data, 0)
  mx, dx = mjx.put_model(model), mjx.put_data(model, data)
  rows = [measure(mx, dx, int(b), _STEPS.value, _REPEATS.value) for b in _BATCH_SIZES.value]
  result = {'jax': jax.__version__, 'mujoco': mujoco.__version__, 'steps': _STEPS.value, 'physics': str(physics),
            'rows': rows}
  print(f"jax {result['jax']}  mujoco {result['mujoco']}  {physics}")
  print(f"{'batch':>6} {'physics steps/s':>16} {'compile s':>10}")
  for r in rows:
    print(f"{r['batch']:>6} {r['physics_steps_per_s']:>16.0f} {r['compile_and_first_call_s']:>10.1f}")
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
