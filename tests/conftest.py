"""Shared fixtures: envs are expensive to build and to compile, so each backend's jitted, vmapped
reset/step is built once per test session."""

import functools

import jax
import jax.numpy as jnp
import pytest

from envs.kitchen import KitchenConfig, KitchenEnv, tasks

NOISELESS = dict(robot_noise_ratio=0.0, object_noise_ratio=0.0)


@functools.lru_cache(maxsize=None)
def batched_env(backend: str, **overrides):
  """(env, jit(vmap(reset)), jit(vmap(step))) for a noiseless env on `backend`."""
  env = KitchenEnv(KitchenConfig(backend=backend, **{**NOISELESS, **overrides}))
  reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
  step = jax.jit(jax.vmap(env.step))
  return env, reset, step


@pytest.fixture(scope='session')
def microwave_goal():
  return jnp.asarray(tasks.goal_state('microwave-kettle-topknob-hinge'), jnp.float32)
