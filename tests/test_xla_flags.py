"""`envs` turns XLA's CPU fusion emitters off before JAX creates a backend, and warns when it is too late."""

import os
import subprocess
import sys

import envs


def test_flag_set_on_import():
  assert '--xla_cpu_use_fusion_emitters=false' in os.environ['XLA_FLAGS']


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-W', 'always', '-c', code], capture_output=True, text=True,
                        env=env, timeout=300, check=True)


def test_warns_when_jax_already_initialized_and_respects_user_flag():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  late = _run('import jax; jax.numpy.zeros(1).block_until_ready(); import envs, os; print(os.environ.get("XLA_FLAGS"))', env)
  assert 'not set' in late.stderr and late.stdout.strip() == 'None'
  user = _run('import envs, os; print(os.environ["XLA_FLAGS"])', {**env, 'XLA_FLAGS': '--xla_cpu_use_fusion_emitters=true'})
  assert user.stdout.strip() == '--xla_cpu_use_fusion_emitters=true'
  assert envs._CPU_FLAG == '--xla_cpu_use_fusion_emitters=false'
