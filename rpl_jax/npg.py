"""Natural policy gradient: advantages (GAE), the likelihood-ratio surrogate, the Fisher-vector
product, conjugate gradient, the normalised step with its KL check, and the value baseline's fit.

Everything is a pure function of pytrees with static configs, so one RRF iteration jits as a whole
and vmaps over goals. The numbers follow mjrl (DESIGN.md, NPG reference numbers): GAE with gamma
0.995 and lambda 0.97, the Fisher as the Hessian of the mean KL(old || new) plus damping 1e-4, 10 CG
iterations stopping at r.r < 1e-10, and the step alpha = sqrt(delta / (g^T F^-1 g + 1e-20))
(mjrl algos/npg_cg.py, utils/cg_solve.py). On top of mjrl, the update checks the realised KL and
backtracks, and it never applies a step whose curvature or KL is not finite.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from rpl_jax import networks

Params = networks.Params


# --- advantages -----------------------------------------------------------------------------------


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminals: jax.Array, ends: jax.Array,
        gamma: float = 0.995, lam: float = 0.97) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over time, the leading axis; all inputs [T, ...]. values[t]
  is V at step t's input and next_values[t] is V at the state after step t under the same
  conditioning (for the low level: the same subgoal, even where the next step gets a new one).
  terminals[t] (bool): the episode ended at t with nothing more to come, so next_values[t] is not
  bootstrapped. ends[t] (bool, terminals included): no later advantage reaches step t, for a
  terminal, a truncation or the end of a low-level subgoal segment (those still bootstrap).
  Trailing axes are independent sequences (or vmap). Returns (advantages, returns = advantages +
  values), both [T, ...]."""
  chex.assert_equal_shape([rewards, values, next_values, terminals, ends])
  deltas = rewards + gamma * (1.0 - terminals.astype(rewards.dtype)) * next_values - values
  carry_on = 1.0 - (ends | terminals).astype(rewards.dtype)

  def backward(next_advantage, step):
    delta, carry = step
    advantage = delta + gamma * lam * carry * next_advantage
    return advantage, advantage

  advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, carry_on), reverse=True)[1]
  return advantages, advantages + values


def whiten(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return (x - jnp.mean(x)) / (jnp.std(x) + eps)


# --- surrogate and Fisher -------------------------------------------------------------------------


@struct.dataclass
class NPGBatch:
  """On-policy samples of one policy level, flattened over envs and time."""
  obs: jax.Array  # [N, obs_dim]
  goal: jax.Array  # [N, goal_dim], or broadcastable against obs
  actions: jax.Array  # [N, output_dim]: the policy's outputs (subgoals for the high level)
  advantages: jax.Array  # [N], whitened by the caller


def surrogate(policy: networks.GaussianPolicy, params: Params, normalizer: networks.PolicyNormalizer,
              obs: jax.Array, goal: jax.Array, actions: jax.Array, old_log_prob: jax.Array,
              advantages: jax.Array) -> jax.Array:
  """mean(pi(a) / pi_old(a) * A): its gradient at params = old params is the policy gradient."""
  log_prob = policy.log_prob(params, normalizer, obs, goal, actions)
  return jnp.mean(jnp.exp(log_prob - old_log_prob) * advantages)


def fisher_vector_product(policy: networks.GaussianPolicy, params: Params,
                          normalizer: networks.PolicyNormalizer, obs: jax.Array, goal: jax.Array,
                          damping: float = 1e-4) -> Callable[[jax.Array], jax.Array]:
  """v [P] -> (F + damping I) v, with F the Hessian of the mean KL(old || new) at new = old = params,
  over the flat params (ravel_pytree order). Forward-over-reverse, never the matrix: the gradient
  of the KL is linearised once here, so each product (one per CG iteration) is only the tangent pass."""
  flat, unravel = ravel_pytree(params)
  old = jax.lax.stop_gradient(params)

  def kl_gradient(flat_new):
    return jax.grad(lambda p: jnp.mean(policy.kl(old, unravel(p), normalizer, obs, goal)))(flat_new)

  hessian_product = jax.linearize(kl_gradient, flat)[1]
  return lambda v: hessian_product(v) + damping * v


# --- conjugate gradient ---------------------------------------------------------------------------


class CGResult(NamedTuple):
  x: jax.Array  # [P]: the approximate solution of A x = b; finite even when CG was flagged
  iterations_used: jax.Array  # int32: updates applied to x
  residual_norm_sq: jax.Array  # r.r at the end (NaN when b was not finite)
  curvature_ok: jax.Array  # bool: False when some p^T A p was <= 0 or not finite (CG stopped there)


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, iterations: int = 10,
                       tolerance: float = 1e-10) -> CGResult:
  """Solves A x = b for a symmetric positive definite A given as `matvec`, from x = 0, stopping
  after `iterations` updates or once r.r < tolerance (mjrl utils/cg_solve.py). A direction with
  non-positive or non-finite curvature stops it before that direction touches x, and is flagged."""

  def keep_going(state):
    i, _, _, _, rr, ok = state
    return ok & (i < iterations) & ~(rr < tolerance)  # a NaN residual goes in, to be flagged

  def update(state):
    i, x, r, p, rr, _ = state
    ap = matvec(p)
    pap = jnp.vdot(p, ap)
    ok = jnp.isfinite(pap) & (pap > 0)
    step = jnp.where(ok, rr / pap, 0.0)
    x = jnp.where(ok, x + step * p, x)
    r = jnp.where(ok, r - step * ap, r)
    rr_new = jnp.where(ok, jnp.vdot(r, r), rr)
    p = r + rr_new / rr * p
    return i + ok.astype(jnp.int32), x, r, p, rr_new, ok

  rr = jnp.vdot(b, b)
  init = (jnp.int32(0), jnp.zeros_like(b), b, b, rr, jnp.bool_(True))
  i, x, _, _, rr, ok = jax.lax.while_loop(keep_going, update, init)
  return CGResult(x, i, rr, ok)


# --- the natural gradient step --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NPGConfig:
  step_size: float = 0.05  # delta of the normalised step; the quadratic KL model predicts delta / 2
  cg_iterations: int = 10
  cg_tolerance: float = 1e-10
  damping: float = 1e-4
  kl_tolerance: float = 1.5  # the realised mean KL may reach kl_tolerance * step_size
  max_backtracks: int = 10
  backtrack_ratio: float = 0.5

  def __post_init__(self):
    for name in ('step_size', 'cg_tolerance', 'kl_tolerance'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} must be > 0, got {getattr(self, name)}.')
    if self.cg_iterations < 1 or self.max_backtracks < 0 or self.damping < 0:
      raise ValueError(f'need cg_iterations >= 1, max_backtracks >= 0 and damping >= 0, got '
                       f'{self.cg_iterations}, {self.max_backtracks} and {self.damping}.')
    if not 0 < self.backtrack_ratio < 1:
      raise ValueError(f'backtrack_ratio must be in (0, 1), got {self.backtrack_ratio}.')


class NPGInfo(NamedTuple):
  kl: jax.Array  # mean KL(old || new) of the applied step (0 when skipped)
  step_size: jax.Array  # alpha applied to x = F^-1 g (0 when skipped)
  cg_iterations: jax.Array
  cg_residual: jax.Array  # r.r after CG
  grad_norm: jax.Array  # |g|, extra_gradient included
  surrogate_before: jax.Array
  surrogate_after: jax.Array
  skipped: jax.Array  # bool: params unchanged (bad curvature, or no candidate within the KL bound)
  backtracks: jax.Array  # int32: step shrinks tried after the full step


def natural_gradient_update(policy: networks.GaussianPolicy, params: Params,
                            normalizer: networks.PolicyNormalizer, batch: NPGBatch, config: NPGConfig,
                            extra_gradient: jax.Array | None = None) -> tuple[Params, NPGInfo]:
  """One NPG step from `params` (the policy that collected `batch`). `extra_gradient` [P] (flat, in
  ravel_pytree order) is added to the policy gradient before CG: DAPG passes lambda times the
  gradient of the demos' mean log-likelihood. The step alpha * F^-1 g shrinks by backtrack_ratio
  until its mean KL is within kl_tolerance * step_size; when the curvature is bad or no shrink
  passes, params come back unchanged and skipped is True. Jit with policy and config static."""
  flat, unravel = ravel_pytree(params)
  if extra_gradient is not None:
    chex.assert_shape(extra_gradient, flat.shape)
  chex.assert_shape(batch.advantages, batch.actions.shape[:-1])
  old_log_prob = jax.lax.stop_gradient(policy.log_prob(params, normalizer, batch.obs, batch.goal, batch.actions))

  def objective(flat_params):
    return surrogate(policy, unravel(flat_params), normalizer, batch.obs, batch.goal, batch.actions,
                     old_log_prob, batch.advantages)

  def mean_kl(flat_params):
    return jnp.mean(policy.kl(params, unravel(flat_params), normalizer, batch.obs, batch.goal))

  surrogate_before, g = jax.value_and_grad(objective)(flat)
  if extra_gradient is not None:
    g = g + extra_gradient
  fvp = fisher_vector_product(policy, params, normalizer, batch.obs, batch.goal, config.damping)
  cg = conjugate_gradient(fvp, g, config.cg_iterations, config.cg_tolerance)
  gx = jnp.vdot(g, cg.x)  # = x^T F x for any CG iterate, so the quadratic KL of alpha * x is delta / 2
  curvature_ok = cg.curvature_ok & jnp.isfinite(gx) & (gx > 0)
  alpha = jnp.where(curvature_ok, jnp.sqrt(config.step_size / (gx + 1e-20)), 0.0)
  bound = config.kl_tolerance * config.step_size

  def candidate(k):
    step = alpha * config.backtrack_ratio**k
    new_flat = flat + step * cg.x
    return step, new_flat, mean_kl(new_flat)

  def too_far(state):
    k, _, new_flat, kl = state
    within = (kl <= bound) & jnp.all(jnp.isfinite(new_flat))  # a NaN KL is not within
    return ~within & (k < config.max_backtracks)

  def shrink(state):
    k = state[0] + 1
    return (k,) + candidate(k)

  backtracks, step, new_flat, kl = jax.lax.while_loop(too_far, shrink, (jnp.int32(0),) + candidate(0))
  accepted = curvature_ok & (kl <= bound) & jnp.all(jnp.isfinite(new_flat))
  new_flat = jnp.where(accepted, new_flat, flat)
  info = NPGInfo(kl=jnp.where(accepted, kl, 0.0), step_size=jnp.where(accepted, step, 0.0),
                 cg_iterations=cg.iterations_used, cg_residual=cg.residual_norm_sq, grad_norm=jnp.linalg.norm(g),
                 surrogate_before=surrogate_before, surrogate_after=objective(new_flat), skipped=~accepted,
                 backtracks=backtracks)
  return unravel(new_flat), info


# --- value baseline -------------------------------------------------------------------------------


def fit_value(value_net: networks.ValueNetwork, params: Params, opt_state: optax.OptState,
              normalizer: networks.PolicyNormalizer, obs: jax.Array, goal: jax.Array, returns: jax.Array,
              optimizer: optax.GradientTransformation, epochs: int, batch_size: int,
              key: jax.Array) -> tuple[Params, optax.OptState, jax.Array]:
  """Regresses V(obs, goal) [N] onto `returns` [N] by minibatch MSE (mjrl baselines/mlp_baseline.py:
  Adam 1e-3). Each epoch reshuffles and drops the last N % batch_size samples. Returns (params,
  opt_state, [2]: the mean squared error over all N before and after). Jit with value_net,
  optimizer, epochs and batch_size static."""
  chex.assert_rank(returns, 1)
  num = returns.shape[0]
  if not 1 <= batch_size <= num:
    raise ValueError(f'batch_size must be in [1, {num}], got {batch_size}.')
  goal = jnp.broadcast_to(goal, (num,) + goal.shape[-1:])

  def loss(params, index):
    return jnp.mean((value_net.apply(params, normalizer, obs[index], goal[index]) - returns[index])**2)

  def minibatch(carry, index):
    params, opt_state = carry
    grads = jax.grad(loss)(params, index)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(carry, key):
    batches = jax.random.permutation(key, num)[:num - num % batch_size].reshape(-1, batch_size)
    return jax.lax.scan(minibatch, carry, batches)[0], None

  everything = jnp.arange(num)
  before = loss(params, everything)
  (params, opt_state), _ = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
  return params, opt_state, jnp.stack([before, loss(params, everything)])
