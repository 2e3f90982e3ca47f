"""NPG: GAE against a float64 loop, the Fisher-vector product (Gauss-Newton form) against the dense
KL Hessian, the closed-form Gaussian Fisher and jax.linearize's product, its single linearisation
and its Fisher subsample, CG against numpy's solve, float32 CG against float64, CG on bad matrices,
and the update's step size, quadratic KL prediction, backtracking, skips, DAPG hook, jit and vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from rpl_jax import networks, npg

OBS, GOAL, OUT = 3, 2, 2
CONFIG = networks.PolicyConfig(hidden=(8,))
POLICY = networks.make_policy(OBS, GOAL, OUT, CONFIG)


def random_policy(seed: int):
  """Perturbed params (a real last layer, one log_std below the floor) and non-identity normalizers."""
  rng = np.random.default_rng(seed)
  params = POLICY.init(jax.random.key(seed))
  params = jax.tree.map(lambda p: p + jnp.asarray(0.5 * rng.normal(size=p.shape), jnp.float32), params)
  params['log_std'] = jnp.asarray([-3.5, -0.3], jnp.float32)
  normalizer = networks.PolicyNormalizer(*(
      networks.Normalizer(jnp.asarray(rng.normal(size=d), jnp.float32),
                          jnp.asarray(rng.uniform(0.5, 2.0, size=d), jnp.float32)) for d in (OBS, GOAL, OUT)))
  return params, normalizer


def random_batch(seed: int, params, normalizer, num: int = 64) -> npg.NPGBatch:
  """On-policy actions; advantages reward actions near a fixed target, so the gradient is informative."""
  rng = np.random.default_rng(seed)
  obs = normalizer.obs.denormalize(jnp.asarray(rng.normal(size=(num, OBS)), jnp.float32))
  goal = normalizer.goal.denormalize(jnp.asarray(rng.normal(size=(num, GOAL)), jnp.float32))
  actions = POLICY.sample(params, normalizer, obs, goal, jax.random.key(seed))
  advantages = npg.whiten(-jnp.sum((actions - normalizer.output.mean - 0.5)**2, -1))
  return npg.NPGBatch(obs, goal, actions, advantages)


def update(params, normalizer, batch, config=npg.NPGConfig(), extra_gradient=None):
  return _jit_update(params, normalizer, batch, config, extra_gradient)


@functools.partial(jax.jit, static_argnums=3)
def _jit_update(params, normalizer, batch, config, extra_gradient):
  return npg.natural_gradient_update(POLICY, params, normalizer, batch, config, extra_gradient)


def dense(matvec, dim: int) -> np.ndarray:
  return np.asarray(jax.vmap(matvec)(jnp.eye(dim, dtype=jnp.float32)), np.float64).T


# --- advantages -----------------------------------------------------------------------------------


def reference_gae(rewards, values, dones, gamma, lam):
  advantages, next_advantage = np.zeros(len(rewards)), 0.0
  for t in reversed(range(len(rewards))):
    bootstrap = 0.0 if dones[t] else values[t + 1]
    next_advantage = 0.0 if dones[t] else next_advantage
    next_advantage = rewards[t] + gamma * bootstrap - values[t] + gamma * lam * next_advantage
    advantages[t] = next_advantage
  return advantages, advantages + values[:-1]


def test_gae_matches_a_float64_loop_batched_either_way():
  rng = np.random.default_rng(0)
  envs, steps, gamma, lam = 4, 40, 0.9, 0.8
  rewards, values = rng.normal(size=(envs, steps)), rng.normal(size=(envs, steps + 1))
  dones = rng.uniform(size=(envs, steps)) < 0.15
  dones[0, -1] = True
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  dones = jnp.asarray(dones)
  vmapped = jax.vmap(functools.partial(npg.gae, gamma=gamma, lam=lam))(
      f32(rewards), f32(values[:, :-1]), f32(values[:, 1:]), dones, dones)
  time_major = npg.gae(f32(rewards.T), f32(values[:, :-1].T), f32(values[:, 1:].T), dones.T, dones.T, gamma, lam)
  for e in range(envs):
    want = reference_gae(rewards[e], values[e], dones[e], gamma, lam)
    for got in (vmapped, (time_major[0].T, time_major[1].T)):
      np.testing.assert_allclose(got[0][e], want[0], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(got[1][e], want[1], rtol=1e-5, atol=1e-5)


def test_gae_done_cuts_everything_after_it():
  rng = np.random.default_rng(1)
  rewards, values = jnp.asarray(rng.normal(size=20), jnp.float32), jnp.asarray(rng.normal(size=21), jnp.float32)
  dones = jnp.zeros(20, bool).at[7].set(True)
  advantages = npg.gae(rewards, values[:-1], values[1:], dones, dones)[0]
  changed = npg.gae(rewards.at[8:].add(5.0), values[:-1].at[8:].add(-3.0), values[1:].at[7:].add(-3.0), dones,
                    dones)[0]
  np.testing.assert_array_equal(advantages[:8], changed[:8])
  assert float(advantages[7]) == pytest.approx(float(rewards[7] - values[7]), abs=1e-6)
  assert not np.allclose(advantages[8:], changed[8:])


def test_gae_truncation_bootstraps_but_cuts_the_chain():
  """A segment end (the low level's subgoal switch) bootstraps from next_values but no later
  advantage reaches it; a terminal does neither."""
  rng = np.random.default_rng(3)
  rewards, values, next_values = (jnp.asarray(rng.normal(size=12), jnp.float32) for _ in range(3))
  none = jnp.zeros(12, bool)
  ends = none.at[5].set(True)
  advantages, returns = npg.gae(rewards, values, next_values, none, ends, 0.9, 0.8)
  gamma, lam = 0.9, 0.8
  want, running = np.zeros(12), 0.0
  for t in reversed(range(12)):
    running = 0.0 if t == 5 else running
    running = float(rewards[t]) + gamma * float(next_values[t]) - float(values[t]) + gamma * lam * running
    want[t] = running
  np.testing.assert_allclose(advantages, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(returns, want + np.asarray(values), rtol=1e-5, atol=1e-5)
  terminal = npg.gae(rewards, values, next_values, ends, ends, 0.9, 0.8)[0]
  assert float(terminal[5]) == pytest.approx(float(rewards[5] - values[5]), abs=1e-6)


def test_whiten():
  x = npg.whiten(jnp.asarray(np.random.default_rng(2).normal(3.0, 7.0, size=500), jnp.float32))
  assert abs(float(jnp.mean(x))) < 1e-5 and float(jnp.std(x)) == pytest.approx(1.0, abs=1e-5)


# --- Fisher-vector product ------------------------------------------------------------------------


def test_fvp_is_the_kl_hessian_and_the_closed_form_gaussian_fisher():
  params, normalizer = random_policy(3)
  batch = random_batch(3, params, normalizer, num=7)
  flat, unravel = ravel_pytree(params)
  damping = 1e-2
  fvp = jax.jit(npg.fisher_vector_product(POLICY, params, normalizer, batch.obs, batch.goal, damping))
  got = dense(fvp, flat.size) - damping * np.eye(flat.size)
  mean_kl = lambda p: jnp.mean(POLICY.kl(params, unravel(p), normalizer, batch.obs, batch.goal))
  hessian = np.asarray(jax.jit(jax.hessian(mean_kl))(flat), np.float64)
  scale = np.abs(hessian).max()
  np.testing.assert_allclose(got, got.T, atol=1e-6 * scale)
  np.testing.assert_allclose(got, hessian, atol=1e-5 * scale)

  # A diagonal Gaussian's Fisher in its (mean, log_std) outputs is diag(1 / std^2, 2), pulled back
  # through the outputs' Jacobians and averaged over samples.
  j_mean, j_log_std = (np.asarray(j, np.float64) for j in
                       jax.jit(jax.jacrev(lambda p: POLICY.apply(unravel(p), normalizer, batch.obs, batch.goal)))(flat))
  log_std = np.asarray(POLICY.apply(params, normalizer, batch.obs, batch.goal)[1], np.float64)
  fisher = (np.einsum('nop,no,noq->pq', j_mean, np.exp(-2 * log_std), j_mean)
            + 2 * np.einsum('nop,noq->pq', j_log_std, j_log_std)) / len(batch.obs)
  np.testing.assert_allclose(got, fisher, atol=1e-5 * scale)
  # the log_std below the floor gets no curvature (only damping)
  floored = ravel_pytree({'mlp': jax.tree.map(jnp.zeros_like, params['mlp']),
                          'log_std': jnp.asarray([1.0, 0.0], jnp.float32)})[0]
  np.testing.assert_allclose(fvp(floored), damping * floored, atol=1e-7)
  # one goal for the whole batch averages over the observations' samples
  shared = npg.fisher_vector_product(POLICY, params, normalizer, batch.obs, batch.goal[0], damping)
  broadcast = npg.fisher_vector_product(POLICY, params, normalizer, batch.obs,
                                        jnp.broadcast_to(batch.goal[0], batch.goal.shape), damping)
  np.testing.assert_allclose(dense(shared, flat.size), dense(broadcast, flat.size), rtol=1e-5, atol=1e-6 * scale)


def generic_fvp(policy, params, normalizer, obs, goal, damping):
  """The Gauss-Newton product by jax.linearize of the whole policy and its transpose, over the whole
  batch at once: the generic route that fisher_vector_product's written-out MLP Jacobian replaces."""
  flat, unravel = ravel_pytree(params)
  (_, log_std), jvp = jax.linearize(lambda p: policy.apply(unravel(p), normalizer, obs, goal), flat)
  vjp = jax.linear_transpose(jvp, flat)
  num = log_std.size // log_std.shape[-1]

  def product(v):
    d_mean, d_log_std = jvp(v)
    return vjp((jnp.exp(-2 * log_std) * d_mean / num, 2 * d_log_std / num))[0] + damping * v

  return product


@pytest.mark.parametrize('hidden, block_size', [((8,), 3), ((8, 5), 3), ((8, 5), 7), ((8, 5), 64), ((6, 5, 4), 2)])
def test_fvp_equals_the_generic_linearisation(hidden, block_size):
  """Any depth, blocks with and without a remainder (7 samples), a relative goal and a relative output
  (a subgoal: the observation plus the MLP's offset), one log_std on its floor (where jnp.maximum
  splits the derivative) and one below it."""
  rng = np.random.default_rng(18)
  obs_dim, goal_dim = 4, 3
  policy = networks.make_policy(obs_dim, goal_dim, obs_dim, networks.PolicyConfig(hidden=hidden))
  params = jax.tree.map(lambda p: p + jnp.asarray(0.5 * rng.normal(size=p.shape), jnp.float32),
                        policy.init(jax.random.key(18)))
  params['log_std'] = jnp.asarray([policy.config.min_log_std, -3.5, -1.0, 0.2], jnp.float32)
  normalizer = networks.PolicyNormalizer(*(
      networks.Normalizer(jnp.asarray(rng.normal(size=d), jnp.float32),
                          jnp.asarray(rng.uniform(0.5, 2.0, size=d), jnp.float32)) for d in (obs_dim, goal_dim, obs_dim)),
                                         relative_goal=True, relative_output=True)
  obs = jnp.asarray(rng.normal(size=(7, obs_dim)), jnp.float32)
  for goal in (jnp.asarray(rng.normal(size=(7, goal_dim)), jnp.float32), jnp.ones(goal_dim)):
    size = ravel_pytree(params)[0].size
    want = dense(generic_fvp(policy, params, normalizer, obs, goal, 1e-3), size)
    got = dense(jax.jit(npg.fisher_vector_product(policy, params, normalizer, obs, goal, 1e-3, block_size)), size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  with pytest.raises(ValueError, match='fisher_block_size'):
    npg.NPGConfig(fisher_block_size=0)


def primitives(jaxpr) -> set[str]:
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jax.core.jaxprs_in_params(eqn.params):
      names |= primitives(sub)
  return names


def test_fvp_is_linearised_once_and_passes_through_jit():
  params, normalizer = random_policy(16)
  batch = random_batch(16, params, normalizer)
  v = ravel_pytree(params)[0] + 1.0
  fvp = npg.fisher_vector_product(POLICY, params, normalizer, batch.obs, batch.goal)
  # a product only replays the linearisation: no nonlinearity of the network is evaluated again
  assert not primitives(jax.make_jaxpr(fvp)(v).jaxpr) & {'tanh', 'exp', 'log', 'logistic', 'pow', 'max'}
  jitted = jax.jit(lambda params, normalizer, batch: npg.fisher_vector_product(
      POLICY, params, normalizer, batch.obs, batch.goal))(params, normalizer, batch)
  want = fvp(v)
  np.testing.assert_allclose(jax.jit(lambda fvp, v: fvp(v))(jitted, v), want, rtol=1e-5,
                             atol=1e-6 * float(jnp.abs(want).max()))


def test_fisher_subsample_is_a_fixed_random_subset_and_only_changes_the_fisher():
  params, normalizer = random_policy(17)
  batch = random_batch(17, params, normalizer, num=64)
  for size in (0, 64, 100):
    obs, goal = npg.fisher_samples(batch, size)
    assert obs is batch.obs and goal is batch.goal
  obs, goal = npg.fisher_samples(batch, 16)
  rows = [int(np.flatnonzero(np.all(batch.obs == row, -1))[0]) for row in obs]
  assert len(set(rows)) == 16 and rows == sorted(rows) and rows != list(range(16))
  np.testing.assert_array_equal(goal, batch.goal[np.asarray(rows)])
  np.testing.assert_array_equal(npg.fisher_samples(batch, 16)[0], obs)  # the same subset every call
  one_goal = npg.fisher_samples(batch.replace(goal=batch.goal[0]), 16)[1]
  np.testing.assert_array_equal(one_goal, jnp.broadcast_to(batch.goal[0], goal.shape))

  # the update equals CG on the subsample's Fisher against the full batch's gradient
  config = npg.NPGConfig(step_size=1e-3, cg_iterations=3, fisher_subsample=16)
  new_params, info = update(params, normalizer, batch, config)
  assert not bool(info.skipped) and int(info.backtracks) == 0
  g = npg.policy_gradient(POLICY, params, normalizer, batch)[1]
  fvp = npg.fisher_vector_product(POLICY, params, normalizer, obs, goal, config.damping)
  x = jax.jit(lambda g: npg.conjugate_gradient(fvp, g, config.cg_iterations).x)(g)
  step = np.sqrt(config.step_size / float(jnp.vdot(g, x)))
  assert float(info.step_size) == pytest.approx(step, rel=1e-4)
  np.testing.assert_allclose(ravel_pytree(new_params)[0], ravel_pytree(params)[0] + step * x, rtol=1e-5, atol=1e-6)
  full = update(params, normalizer, batch, npg.NPGConfig(step_size=1e-3, cg_iterations=3))[1]
  assert float(full.grad_norm) == pytest.approx(float(info.grad_norm), rel=1e-6)
  assert abs(float(full.step_size) / float(info.step_size) - 1) > 1e-2
  with pytest.raises(ValueError, match='fisher_subsample'):
    npg.NPGConfig(fisher_subsample=-1)


# --- conjugate gradient ---------------------------------------------------------------------------


def random_spd(rng, dim: int, condition: float) -> np.ndarray:
  q = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
  return (q * np.geomspace(1.0, condition, dim)) @ q.T


def solve(a, b, dtype=jnp.float32, **kwargs) -> npg.CGResult:
  a = jnp.asarray(a, dtype)
  return jax.jit(lambda b: npg.conjugate_gradient(lambda v: a @ v, b, **kwargs))(jnp.asarray(b, dtype))


def test_cg_solves_an_spd_system():
  rng = np.random.default_rng(4)
  a, b = random_spd(rng, 12, 20.0), rng.normal(size=12)
  result = solve(a, b, iterations=50, tolerance=1e-10)
  np.testing.assert_allclose(result.x, np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
  assert bool(result.curvature_ok) and float(result.residual_norm_sq) < 1e-10
  assert 12 <= int(result.iterations_used) < 50  # exact in <= n steps but for float32 rounding


def test_cg_stops_at_the_cap_or_the_tolerance():
  rng = np.random.default_rng(5)
  a, b = random_spd(rng, 12, 100.0), rng.normal(size=12)
  capped = solve(a, b, iterations=3)
  assert int(capped.iterations_used) == 3 and float(capped.residual_norm_sq) > 1e-10
  np.testing.assert_allclose(capped.residual_norm_sq, np.sum((b - a @ np.asarray(capped.x, np.float64))**2),
                             rtol=1e-3)
  scaled = solve(2.5 * np.eye(12), b, iterations=10)  # one direction solves a multiple of I
  assert int(scaled.iterations_used) == 1
  np.testing.assert_allclose(scaled.x, b / 2.5, rtol=1e-6)
  tiny = solve(a, 1e-6 * b, iterations=10, tolerance=1e-10)
  assert int(tiny.iterations_used) == 0 and bool(tiny.curvature_ok)


def test_float32_cg_against_float64_on_a_policy_fisher():
  """Float32 CG on the float32 products against float64 CG on the dense float64 KL Hessian. At
  damping 1e-4 (condition number ~1e7 on these policies) the two agree to 1e-5 for the first few
  iterations; by the default 10 they part, by 0.02-10% in x depending on the policy (this one is the
  worst of those tried), while g^T x, which sets the step size, stays within 3%. Better conditioned,
  float32 CG converges to the dense solve."""
  params, normalizer = random_policy(11)
  batch = random_batch(11, params, normalizer)
  size = ravel_pytree(params)[0].size
  g = npg.policy_gradient(POLICY, params, normalizer, batch)[1]
  with jax.enable_x64(True):
    params64, normalizer64, batch64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, normalizer, batch))
    flat64, unravel64 = ravel_pytree(params64)
    hessian = np.asarray(jax.jit(jax.hessian(lambda p: jnp.mean(POLICY.kl(
        params64, unravel64(p), normalizer64, batch64.obs, batch64.goal))))(flat64))
    g64 = np.asarray(npg.policy_gradient(POLICY, params64, normalizer64, batch64)[1])
    cases = ((1e-4, 3, 1e-5, 1e-6), (1e-4, 10, 0.15, 0.03), (1e-1, 300, 1e-4, 1e-6))
    for damping, iterations, x_rtol, gx_rtol in cases:
      a = hessian + damping * np.eye(size)
      want = np.asarray(solve(a, g64, iterations=iterations, tolerance=0.0, dtype=jnp.float64).x)
      if iterations > size:
        np.testing.assert_allclose(want, np.linalg.solve(a, g64), rtol=1e-8, atol=1e-10 * np.abs(want).max())
      fvp = npg.fisher_vector_product(POLICY, params, normalizer, batch.obs, batch.goal, damping)
      got = np.asarray(jax.jit(lambda g: npg.conjugate_gradient(fvp, g, iterations, 0.0).x)(g), np.float64)
      assert np.linalg.norm(got - want) < x_rtol * np.linalg.norm(want)
      assert g64 @ got == pytest.approx(g64 @ want, rel=gx_rtol)


@pytest.mark.parametrize('case', ['negative', 'indefinite', 'nan_matrix', 'nan_rhs'])
def test_cg_flags_bad_curvature_and_stays_finite(case):
  rng = np.random.default_rng(6)
  a, b = random_spd(rng, 6, 10.0), rng.normal(size=6)
  if case == 'negative':
    a = -a
  elif case == 'indefinite':  # positive along b, so CG takes a step before meeting the negative direction
    a = np.diag([4.0, 3.0, 2.0, 1.0, 1.0, -0.5])
    b = np.ones(6)
  elif case == 'nan_matrix':
    a[2, 3] = np.nan
  else:
    b[1] = np.nan
  result = solve(a, b, iterations=10)
  assert not bool(result.curvature_ok)
  assert np.all(np.isfinite(result.x))
  if case == 'indefinite':
    assert 1 <= int(result.iterations_used) < 6
  else:
    assert int(result.iterations_used) == 0


# --- the update -----------------------------------------------------------------------------------


def test_normalised_step_matches_the_quadratic_kl_model_and_improves_the_surrogate():
  params, normalizer = random_policy(7)
  batch = random_batch(7, params, normalizer)
  delta = 1e-3
  config = npg.NPGConfig(step_size=delta)
  new_params, info = update(params, normalizer, batch, config)
  assert not bool(info.skipped) and int(info.backtracks) == 0
  assert 1 <= int(info.cg_iterations) <= config.cg_iterations
  d = ravel_pytree(new_params)[0] - ravel_pytree(params)[0]
  curvature = jax.jit(lambda d, damping: jnp.vdot(
      d, npg.fisher_vector_product(POLICY, params, normalizer, batch.obs, batch.goal, damping)(d)))
  # CG's iterates satisfy x^T F x = g^T x, so the damped quadratic model predicts delta / 2
  assert 0.5 * float(curvature(d, config.damping)) == pytest.approx(delta / 2, rel=1e-2)
  assert float(info.kl) == pytest.approx(0.5 * float(curvature(d, 0.0)), rel=0.05)
  np.testing.assert_allclose(info.kl, jnp.mean(POLICY.kl(params, new_params, normalizer, batch.obs, batch.goal)),
                             rtol=1e-3)
  # first order: surrogate gain = alpha g^T x = sqrt(delta g^T x) = delta / alpha
  assert float(info.surrogate_before) == pytest.approx(float(jnp.mean(batch.advantages)), abs=1e-6)
  gain = float(info.surrogate_after - info.surrogate_before)
  assert gain > 0 and gain == pytest.approx(delta / float(info.step_size), rel=0.1)


def test_backtracking_halves_until_the_kl_bound_holds():
  params, normalizer = random_policy(8)
  batch = random_batch(8, params, normalizer)
  full = update(params, normalizer, batch, npg.NPGConfig(step_size=1e-3))[1]
  # the full step's KL is about delta / 2; each halving quarters it: 0.5, 0.125, 0.03 delta
  config = npg.NPGConfig(step_size=1e-3, kl_tolerance=0.1)
  new_params, info = update(params, normalizer, batch, config)
  assert not bool(info.skipped) and int(info.backtracks) == 2
  assert float(info.step_size) == pytest.approx(float(full.step_size) / 4, rel=1e-6)
  assert float(info.kl) <= 0.1 * 1e-3
  assert float(info.kl) == pytest.approx(float(full.kl) / 16, rel=0.05)
  np.testing.assert_allclose(info.kl, jnp.mean(POLICY.kl(params, new_params, normalizer, batch.obs, batch.goal)),
                             rtol=1e-3)


def test_a_huge_step_is_shrunk_into_the_bound():
  params, normalizer = random_policy(9)
  batch = random_batch(9, params, normalizer)
  config = npg.NPGConfig(step_size=1e6, max_backtracks=40)
  new_params, info = update(params, normalizer, batch, config)
  assert int(info.backtracks) > 0 and not bool(info.skipped)
  assert 0 < float(info.kl) <= config.kl_tolerance * config.step_size
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(new_params))


@pytest.mark.parametrize('case', ['no_candidate', 'nan_advantages', 'zero_gradient'])
def test_skipped_updates_leave_params_unchanged(case):
  params, normalizer = random_policy(10)
  batch = random_batch(10, params, normalizer)
  config = npg.NPGConfig(step_size=1e-3)
  if case == 'no_candidate':
    config = npg.NPGConfig(step_size=1e-3, kl_tolerance=1e-9, max_backtracks=3)
  elif case == 'nan_advantages':
    batch = batch.replace(advantages=batch.advantages.at[5].set(jnp.nan))
  else:
    batch = batch.replace(advantages=jnp.zeros_like(batch.advantages))
  new_params, info = update(params, normalizer, batch, config)
  assert bool(info.skipped)
  assert float(info.step_size) == 0.0 and float(info.kl) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new_params, params)
  assert int(info.backtracks) == (3 if case == 'no_candidate' else 0)


# Float32 CG's later iterates amplify the last bits of g (to ~10% of x by iteration 10 on these
# policies, where a float64 CG moves by 3e-7), so comparisons of two routes to one step stop CG
# early, where it is still stable.
CONDITIONED = npg.NPGConfig(cg_iterations=3)


def test_extra_gradient_is_added_before_cg():
  params, normalizer = random_policy(11)
  batch = random_batch(11, params, normalizer)
  flat, unravel = ravel_pytree(params)
  old_log_prob = POLICY.log_prob(params, normalizer, batch.obs, batch.goal, batch.actions)
  g = jax.grad(lambda p: npg.surrogate(POLICY, unravel(p), normalizer, batch.obs, batch.goal, batch.actions,
                                       old_log_prob, batch.advantages))(flat)
  want, want_info = update(params, normalizer, batch, CONDITIONED)
  got, got_info = update(params, normalizer, batch.replace(advantages=jnp.zeros_like(batch.advantages)),
                         CONDITIONED, extra_gradient=g)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), got, want)
  assert float(got_info.grad_norm) == pytest.approx(float(want_info.grad_norm), rel=1e-6)
  assert float(got_info.step_size) == pytest.approx(float(want_info.step_size), rel=1e-5)


def test_update_compiles_once_and_vmaps_over_policies():
  traces = []

  def traced(params, normalizer, batch):
    traces.append(1)
    return npg.natural_gradient_update(POLICY, params, normalizer, batch, CONDITIONED)

  jitted = jax.jit(traced)
  setups = [random_policy(seed) for seed in (12, 13)]
  batches = [random_batch(seed, *setup) for seed, setup in zip((12, 13), setups)]
  batches[1] = batches[1].replace(advantages=batches[1].advantages.at[0].set(jnp.nan))
  singles = [jitted(params, normalizer, batch) for (params, normalizer), batch in zip(setups, batches)]
  assert len(traces) == 1
  np.testing.assert_array_equal([bool(info.skipped) for _, info in singles], [False, True])

  stack = lambda *trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
  batched_params, batched_info = jax.jit(jax.vmap(traced))(
      stack(*(params for params, _ in setups)), stack(*(normalizer for _, normalizer in setups)), stack(*batches))
  for i, (params, info) in enumerate(singles):
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 jax.tree.map(lambda leaf: leaf[i], batched_params), params)
    assert bool(batched_info.skipped[i]) == bool(info.skipped)
    assert int(batched_info.backtracks[i]) == int(info.backtracks)


# --- value baseline -------------------------------------------------------------------------------


def test_fit_value_regresses_onto_the_returns():
  rng = np.random.default_rng(14)
  params, normalizer = random_policy(14)
  obs = normalizer.obs.denormalize(jnp.asarray(rng.normal(size=(512, OBS)), jnp.float32))
  goal = normalizer.goal.denormalize(jnp.asarray(rng.normal(size=(512, GOAL)), jnp.float32))
  returns = jnp.sin(normalizer.obs.normalize(obs)[:, 0]) + 0.5 * normalizer.goal.normalize(goal)[:, 1] + 3.0
  value_net = networks.make_value(OBS, GOAL, hidden=(32, 32))
  optimizer = optax.adam(3e-3)
  value_params = value_net.init(jax.random.key(0))
  fit = jax.jit(npg.fit_value, static_argnums=(0, 7, 8, 9))
  _, _, losses = fit(value_net, value_params, optimizer.init(value_params), normalizer, obs, goal, returns,
                     optimizer, 40, 64, jax.random.key(1))
  assert float(losses[1]) < 0.02 * float(losses[0])
  with pytest.raises(ValueError, match='batch_size'):
    npg.fit_value(value_net, value_params, optimizer.init(value_params), normalizer, obs, goal, returns,
                  optimizer, 1, 1000, jax.random.key(1))
