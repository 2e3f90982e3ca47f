"""Natural policy gradient: advantages (GAE), the likelihood-ratio surrogate, the Fisher-vector
product, conjugate gradient, the normalised step with its KL check, and the value baseline's fit.

Everything is a pure function of pytrees with static configs, so one RRF iteration jits as a whole
and vmaps over goals. The numbers follow mjrl (DESIGN.md, NPG reference numbers): GAE with gamma
0.995 and lambda 0.97, the Fisher as the Hessian of the mean KL(old || new) plus damping 1e-4, 10 CG
iterations stopping at r.r < 1e-10, and the step alpha = sqrt(delta / (g^T F^-1 g + 1e-20))
(mjrl algos/npg_cg.py, utils/cg_solve.py). On top of mjrl, the update checks the realised KL and
backtracks, and it never applies a step whose curvature or KL is not finite. The Fisher's products
use its exact Gauss-Newton form with the network's activations computed once per update and the
MLP's Jacobian written out over cache-sized blocks of samples, optionally on a subsample of the
batch; experiments/bench_npg.py and profile_npg.py measure the update.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
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


def fisher_samples(batch: NPGBatch, size: int) -> tuple[jax.Array, jax.Array]:
  """(obs, goal) that the Fisher averages over: the whole batch when size is 0 or >= N, else `size`
  of its N samples. Their indices are the same on every call, so that the update stays a function of
  its inputs alone and needs no key, but were drawn at random once, so that they do not alias the
  batch's env-by-time layout."""
  num = batch.obs.shape[0]
  if not 0 < size < num:
    return batch.obs, batch.goal
  index = np.sort(np.random.default_rng(0).choice(num, size, replace=False))
  goal = jnp.broadcast_to(batch.goal, batch.obs.shape[:-1] + batch.goal.shape[-1:])
  return batch.obs[index], goal[index]


def fisher_vector_product(policy: networks.GaussianPolicy, params: Params,
                          normalizer: networks.PolicyNormalizer, obs: jax.Array, goal: jax.Array,
                          damping: float = 1e-4, block_size: int = 4096) -> Callable[[jax.Array], jax.Array]:
  """v [P] -> (F + damping I) v, with F the Hessian of the mean KL(old || new) at new = old = params
  over the samples obs [..., obs_dim] and goal (broadcast against obs), in the flat params
  (ravel_pytree order), never as a matrix.

  F is computed in its Gauss-Newton form F = mean_n J_n^T M_n J_n, J_n the Jacobian of sample n's
  outputs (mean, log_std) in the params and M_n the Gaussian's Fisher in those outputs:
  diag(exp(-2 log_std)) on the mean, 2 on the log_std, no cross terms. This is exact, not an
  approximation: the KL's gradient in the outputs is zero at new = old, so the chain rule adds no
  term with the network's second derivatives. The policy's mean, output.denormalize(MLP(inputs))
  (plus the observation with a relative output), depends on params['mlp'] alone and its
  state-independent log_std on params['log_std'] alone, so F is block diagonal: the log_std block,
  one sample's, from jax.linearize; the MLP block from networks.mlp_gauss_newton, the MLP's Jacobian
  written out, on its activations computed once here (by the same operations as the policy's forward
  pass, which XLA then shares) and laid out feature-major in blocks of `block_size` samples. A
  product (one per CG iteration) evaluates no nonlinearity and keeps a block's intermediates in
  cache: about 3 forward passes' worth of matmuls, against 4.3 for forward-over-reverse of the KL's
  gradient, about 1.6x as fast as jax.linearize's transpose over the whole batch (BUILD_NOTES.md,
  "NPG update speed"). The product is a jax.tree_util.Partial, so it passes in and out of jit."""
  x = policy.inputs(normalizer, obs, goal)
  activations = [a.reshape(-1, a.shape[-1]) for a in networks.mlp_activations(params['mlp'], x)]
  num = activations[0].shape[0]
  full = num // block_size * block_size
  blocks = [a[:full].reshape(-1, block_size, a.shape[-1]).transpose(0, 2, 1) for a in activations]
  tail = [a[full:].T for a in activations]
  first = lambda a: a.reshape(-1, a.shape[-1])[:1]
  (_, log_std), log_std_jvp = jax.linearize(
      lambda log_std: policy.apply({**params, 'log_std': log_std}, normalizer, first(obs), first(goal)),
      params['log_std'])
  # d mean = output.std * d MLP, so the mean's Fisher diag(exp(-2 log_std)) is this on the MLP's output
  mlp_weight = (normalizer.output.std * jnp.exp(-log_std[0]))**2 / num
  return jax.tree_util.Partial(_gauss_newton_product, params, blocks, tail, mlp_weight, log_std_jvp,
                               jax.linear_transpose(log_std_jvp, params['log_std']), damping)


def _gauss_newton_product(params, blocks, tail, mlp_weight, log_std_jvp, log_std_vjp, damping, v):
  tangent = ravel_pytree(params)[1](v)
  block_product = lambda activations: networks.mlp_gauss_newton(params['mlp'], tangent['mlp'], activations, mlp_weight)
  mlp = jax.lax.scan(lambda total, block: (jax.tree.map(jnp.add, total, block_product(block)), None),
                     block_product(tail), blocks)[0]
  d_mean, d_log_std = log_std_jvp(tangent['log_std'])
  product = {'mlp': mlp, 'log_std': log_std_vjp((d_mean, 2 * d_log_std))[0]}
  return ravel_pytree(product)[0] + damping * v


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
  # Samples the Fisher (so each CG product) averages over: 0 for all, else a subset of this size
  # (fisher_samples): a noisier estimate of F, for cheaper products; the gradient uses every sample.
  fisher_subsample: int = 0
  # Samples per block of a Fisher product (fisher_vector_product): small enough that a block's
  # intermediates stay in cache. Any size gives the same product up to float32 summation order.
  fisher_block_size: int = 4096

  def __post_init__(self):
    for name in ('step_size', 'cg_tolerance', 'kl_tolerance'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} must be > 0, got {getattr(self, name)}.')
    if self.cg_iterations < 1 or self.max_backtracks < 0 or self.damping < 0:
      raise ValueError(f'need cg_iterations >= 1, max_backtracks >= 0 and damping >= 0, got '
                       f'{self.cg_iterations}, {self.max_backtracks} and {self.damping}.')
    if not 0 < self.backtrack_ratio < 1:
      raise ValueError(f'backtrack_ratio must be in (0, 1), got {self.backtrack_ratio}.')
    if self.fisher_subsample < 0:
      raise ValueError(f'fisher_subsample must be >= 0, got {self.fisher_subsample}.')
    if self.fisher_block_size < 1:
      raise ValueError(f'fisher_block_size must be >= 1, got {self.fisher_block_size}.')


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


def policy_gradient(policy: networks.GaussianPolicy, params: Params, normalizer: networks.PolicyNormalizer,
                    batch: NPGBatch) -> tuple[jax.Array, jax.Array]:
  """(surrogate, g [P]): the surrogate at params with pi_old = pi_params, and its gradient in the flat
  params (ravel_pytree order)."""
  flat, unravel = ravel_pytree(params)
  old_log_prob = jax.lax.stop_gradient(policy.log_prob(params, normalizer, batch.obs, batch.goal, batch.actions))
  return jax.value_and_grad(lambda p: surrogate(policy, unravel(p), normalizer, batch.obs, batch.goal,
                                                batch.actions, old_log_prob, batch.advantages))(flat)


class LineSearch(NamedTuple):
  backtracks: jax.Array  # int32: shrinks tried after the full step
  step_size: jax.Array  # the last candidate's multiple of the direction
  params: jax.Array  # [P]: the last candidate, flat
  kl: jax.Array  # its mean KL(old || new)
  surrogate: jax.Array  # its surrogate (pi_old = pi_params)
  accepted: jax.Array  # bool: it is finite and its KL is within the bound


def line_search(policy: networks.GaussianPolicy, params: Params, normalizer: networks.PolicyNormalizer,
                batch: NPGBatch, direction: jax.Array, step_size: jax.Array, config: NPGConfig) -> LineSearch:
  """Tries flat params + step_size * backtrack_ratio^k * direction [P] for k = 0, 1, ...,
  max_backtracks until a candidate is finite with mean KL(params || candidate) <= kl_tolerance *
  config.step_size. A candidate costs one forward pass, which gives both its KL and its surrogate."""
  flat, unravel = ravel_pytree(params)
  old_log_prob = jax.lax.stop_gradient(policy.log_prob(params, normalizer, batch.obs, batch.goal, batch.actions))
  bound = config.kl_tolerance * config.step_size

  def candidate(k):
    step = step_size * config.backtrack_ratio**k
    new_flat = flat + step * direction
    new = unravel(new_flat)
    kl = jnp.mean(policy.kl(params, new, normalizer, batch.obs, batch.goal))
    gain = surrogate(policy, new, normalizer, batch.obs, batch.goal, batch.actions, old_log_prob, batch.advantages)
    return LineSearch(k, step, new_flat, kl, gain, (kl <= bound) & jnp.all(jnp.isfinite(new_flat)))

  def too_far(state):  # a NaN KL is not within the bound
    return ~state.accepted & (state.backtracks < config.max_backtracks)

  return jax.lax.while_loop(too_far, lambda state: candidate(state.backtracks + 1), candidate(jnp.int32(0)))


def natural_gradient_update(policy: networks.GaussianPolicy, params: Params,
                            normalizer: networks.PolicyNormalizer, batch: NPGBatch, config: NPGConfig,
                            extra_gradient: jax.Array | None = None) -> tuple[Params, NPGInfo]:
  """One NPG step from `params` (the policy that collected `batch`). `extra_gradient` [P] (flat, in
  ravel_pytree order) is added to the policy gradient before CG: DAPG passes lambda times the
  gradient of the demos' mean log-likelihood. The step alpha * F^-1 g shrinks by backtrack_ratio
  until its mean KL is within kl_tolerance * step_size; when the curvature is bad or no shrink
  passes, params come back unchanged and skipped is True. The Fisher averages over
  fisher_samples(batch, config.fisher_subsample). Jit with policy and config static."""
  flat, unravel = ravel_pytree(params)
  if extra_gradient is not None:
    chex.assert_shape(extra_gradient, flat.shape)
  chex.assert_shape(batch.advantages, batch.actions.shape[:-1])
  surrogate_before, g = policy_gradient(policy, params, normalizer, batch)
  if extra_gradient is not None:
    g = g + extra_gradient
  fvp = fisher_vector_product(policy, params, normalizer, *fisher_samples(batch, config.fisher_subsample),
                              config.damping, config.fisher_block_size)
  cg = conjugate_gradient(fvp, g, config.cg_iterations, config.cg_tolerance)
  gx = jnp.vdot(g, cg.x)  # = x^T F x for any CG iterate, so the quadratic KL of alpha * x is delta / 2
  curvature_ok = cg.curvature_ok & jnp.isfinite(gx) & (gx > 0)
  alpha = jnp.where(curvature_ok, jnp.sqrt(config.step_size / (gx + 1e-20)), 0.0)
  search = line_search(policy, params, normalizer, batch, cg.x, alpha, config)
  accepted = curvature_ok & search.accepted
  info = NPGInfo(kl=jnp.where(accepted, search.kl, 0.0), step_size=jnp.where(accepted, search.step_size, 0.0),
                 cg_iterations=cg.iterations_used, cg_residual=cg.residual_norm_sq, grad_norm=jnp.linalg.norm(g),
                 surrogate_before=surrogate_before,
                 surrogate_after=jnp.where(accepted, search.surrogate, surrogate_before), skipped=~accepted,
                 backtracks=search.backtracks)
  return unravel(jnp.where(accepted, search.params, flat)), info


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
