"""Simulated environments. They know nothing of `rpl_jax`.

Importing this package sets `--xla_cpu_use_fusion_emitters=false` in XLA_FLAGS (unless XLA_FLAGS
already sets that flag). Since jax 0.7.1, XLA:CPU's fusion emitters make batched MJX-JAX on the CPU
50-100x slower than unbatched (bisection in BUILD_NOTES.md); the flag restores jax 0.7.0's speed on
every release measured (0.6.2 to 0.10.2). XLA reads the variable when JAX creates its first backend, so this import must
come before the first JAX computation; if it comes later, a warning says so.
"""

import os
import warnings

_CPU_FLAG = '--xla_cpu_use_fusion_emitters=false'


def _configure_xla() -> None:
  current = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_use_fusion_emitters' in current:
    return  # the user's explicit choice
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    warnings.warn(f'JAX backends were created before `envs` was imported, so {_CPU_FLAG} is not set: batched '
                  'MJX-JAX on the CPU will be very slow. Import envs first, or export XLA_FLAGS=' + _CPU_FLAG)
    return
  os.environ['XLA_FLAGS'] = f'{current} {_CPU_FLAG}'.strip()


_configure_xla()
