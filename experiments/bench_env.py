"""Kitchen env throughput per physics backend and batch size, against raw `mujoco.rollout`.

All rows are measured in one run, so their ratios are comparable. Each env row times one jitted
`lax.scan` over `--steps` control steps of `vmap(env.step)` with random actions; compile time (first
call) is reported apart. Each `rollout` row replays, with C MuJoCo's batched `mujoco.rollout` on the
same model and threads, the very position targets the `cpu` row's env computed: the same physics
without the JAX integration, which bounds the `cpu` backend. Prints a table and writes JSON.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import mujoco
import mujoco.rollout
import numpy as np

from envs.kitchen import ACTION_DIM, KitchenConfig, KitchenEnv, tasks

_BACKENDS = flags.DEFINE_list('backends', ['cpu', 'mjx'], 'Env backends; each cpu row is followed by its raw '
                              'mujoco.rollout replay.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['16', '64', '256'], 'Batch sizes for rollout and cpu.')
_MJX_BATCH_SIZES = flags.DEFINE_list(
    'mjx_batch_sizes', None, 'Batch sizes for mjx (default: 1,16 on a CPU host; 1024,4096,16384 on an accelerator).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Control steps per timed call.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per row; the fastest is reported.')
_NTHREAD = flags.DEFINE_integer('nthread', None, 'C MuJoCo threads (default: all cores).')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')


def _best_time(fn, repeats):
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def bench_rollout(env: KitchenEnv, qpos: np.ndarray, ctrl: np.ndarray, nthread: int, repeats: int) -> dict:
  """Raw C rollouts from `qpos` ([B, nq]) under per-control-step targets `ctrl` ([T, B, nu])."""
  model, substeps = env.model, env.config.physics.substeps
  data = [mujoco.MjData(model) for _ in range(nthread)]
  state = np.zeros((qpos.shape[0], mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS)))
  state[:, 1:1 + model.nq] = qpos
  control = np.repeat(np.asarray(ctrl, np.float64).transpose(1, 0, 2), substeps, axis=1)
  with mujoco.rollout.Rollout(nthread=nthread) as runner:
    seconds = _best_time(lambda: runner.rollout(model, data, state, control), repeats)
  return {'seconds': seconds, 'compile_s': 0.0}


def bench_env(env: KitchenEnv, batch: int, steps: int, repeats: int) -> tuple[dict, np.ndarray, np.ndarray]:
  """Times the env; also returns its reset qpos [B, nq] and the targets it commanded [T, B, nu]."""
  goal = jnp.asarray(tasks.goal_state('microwave-kettle-topknob-hinge'), jnp.float32)
  actions = jax.random.uniform(jax.random.key(1), (steps, batch, ACTION_DIM), minval=-1.0, maxval=1.0)
  reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
  step = jax.vmap(env.step)
  ctrl = jax.vmap(env.ctrl)

  @jax.jit
  def run(state, actions):
    return jax.lax.scan(lambda s, a: (step(s, a), ctrl(s.obs[:, :ACTION_DIM], a)), state, actions)

  state = reset(jax.random.split(jax.random.key(0), batch), goal)
  start = time.perf_counter()
  _, targets = jax.block_until_ready(run(state, actions))
  compile_s = time.perf_counter() - start
  seconds = _best_time(lambda: jax.block_until_ready(run(state, actions)), repeats)
  return {'seconds': seconds, 'compile_s': compile_s}, np.asarray(state.data.qpos), np.asarray(targets)


def main(argv):
  del argv
  nthread = _NTHREAD.value or os.cpu_count() or 1
  on_accelerator = jax.default_backend() != 'cpu'
  mjx_batches = _MJX_BATCH_SIZES.value or (['1024', '4096', '16384'] if on_accelerator else ['1', '16'])
  rows = []

  def record(backend, batch, result, env):
    env_steps = batch * _STEPS.value / result['seconds']
    rows.append({'backend': backend, 'batch': batch, 'env_steps_per_s': env_steps,
                 'physics_steps_per_s': env_steps * env.config.physics.substeps, **result})
    print(f"{backend:>8} {batch:>6} {env_steps:>12.0f} env-steps/s {rows[-1]['physics_steps_per_s']:>12.0f} "
          f"physics-steps/s  compile {result['compile_s']:.1f}s", flush=True)

  envs = {}
  for backend in _BACKENDS.value:
    env = envs[backend] = KitchenEnv(KitchenConfig(backend=backend, nthread=nthread))
    for batch in map(int, mjx_batches if backend == 'mjx' else _BATCH_SIZES.value):
      result, qpos, targets = bench_env(env, batch, _STEPS.value, _REPEATS.value)
      record(backend, batch, result, env)
      if backend == 'cpu':
        record('rollout', batch, bench_rollout(env, qpos, targets, nthread, _REPEATS.value), env)
        rows[-2]['vs_rollout'] = rows[-2]['env_steps_per_s'] / rows[-1]['env_steps_per_s']
  result = {'jax': jax.__version__, 'mujoco': mujoco.__version__, 'device': str(jax.devices()[0]),
            'nthread': nthread, 'steps': _STEPS.value, 'physics': str(next(iter(envs.values())).config.physics),
            'rows': rows}
  print(f"\n{'backend':>8} {'batch':>6} {'env-steps/s':>12} {'physics/s':>12} {'compile s':>10} {'vs rollout':>10}")
  for r in rows:
    ratio = f"{r['vs_rollout']:.2f}" if 'vs_rollout' in r else ''
    print(f"{r['backend']:>8} {r['batch']:>6} {r['env_steps_per_s']:>12.0f} {r['physics_steps_per_s']:>12.0f} "
          f"{r['compile_s']:>10.1f} {ratio:>10}")
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
