"""Per-element success of the scripted expert in isolation: each element from the reset state, many
randomised trials (the expert's own randomness), on one backend. Prints a table and writes JSON.

  python experiments/bench_expert.py --trials=100 --steps=160
"""

import functools
import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from envs.kitchen.expert import Expert, element_trials

_TRIALS = flags.DEFINE_integer('trials', 10, 'Randomised trials per element.')
_STEPS = flags.DEFINE_integer('steps', 160, 'Control steps per trial.')
_BACKEND = flags.DEFINE_enum('backend', 'auto', ['auto', 'mjx', 'cpu'], 'Physics backend.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')


def main(argv):
  del argv
  env = KitchenEnv(KitchenConfig(backend=_BACKEND.value))
  expert = Expert(env.model)
  elements = np.repeat(np.arange(len(tasks.ELEMENTS)), _TRIALS.value)
  keys = jax.random.split(jax.random.key(_SEED.value), len(elements))
  trials = jax.jit(functools.partial(element_trials, env, expert, num_steps=_STEPS.value))
  start = time.perf_counter()
  success = np.asarray(trials(keys, jnp.asarray(elements, jnp.int32))[1]) > 0
  seconds = time.perf_counter() - start
  rows = []
  print(f"{'element':<14} {'success':>8} {'mean steps to success':>22}")
  for i, element in enumerate(tasks.ELEMENTS):
    done = success[elements == i]
    reached = done.any(axis=1)
    steps = float(np.argmax(done[reached], axis=1).mean() + 1) if reached.any() else None
    rows.append({'element': element, 'success_rate': float(reached.mean()), 'mean_steps_to_success': steps})
    print(f"{element:<14} {reached.mean():>8.0%} {steps if steps is not None else '-':>22}")
  print(f'{len(elements)} trials x {_STEPS.value} steps on {env.backend} in {seconds:.0f} s (compile included)')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump({'backend': env.backend, 'trials': _TRIALS.value, 'steps': _STEPS.value, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
