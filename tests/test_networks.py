"""Networks: the policy's forward pass, density, samples and KL against float64 numpy references
written from the definitions, the log_std floor and the small last layer, normalizers, and shape
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpl_jax import networks

OBS, GOAL, OUT = 5, 4, 3
CONFIG = networks.PolicyConfig(hidden=(16, 8))


def random_normalizer(rng, dim: int) -> networks.Normalizer:
  return networks.Normalizer(jnp.asarray(rng.normal(size=dim), jnp.float32),
                             jnp.asarray(rng.uniform(0.2, 3.0, size=dim), jnp.float32))


def random_setup(seed: int, batch=(6,)):
  """A policy with perturbed params (the last layer no longer tiny, log_std partly below the floor),
  non-identity normalizers everywhere, and inputs on the normalizers' scale."""
  rng = np.random.default_rng(seed)
  policy = networks.make_policy(OBS, GOAL, OUT, CONFIG)
  params = policy.init(jax.random.key(seed))
  params = jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype), params)
  params['log_std'] = jnp.asarray([-4.0, -0.5, 0.7], jnp.float32)
  normalizer = networks.PolicyNormalizer(*(random_normalizer(rng, d) for d in (OBS, GOAL, OUT)))
  obs = normalizer.obs.denormalize(rng.normal(size=batch + (OBS,))).astype(np.float32)
  goal = normalizer.goal.denormalize(rng.normal(size=batch + (GOAL,))).astype(np.float32)
  return policy, params, normalizer, np.asarray(obs), np.asarray(goal)


def numpy_mlp(params, x: np.ndarray) -> np.ndarray:
  layers = [params[f'Dense_{i}'] for i in range(len(params))]
  for layer in layers[:-1]:
    x = np.tanh(x @ np.float64(layer['kernel']) + np.float64(layer['bias']))
  return x @ np.float64(layers[-1]['kernel']) + np.float64(layers[-1]['bias'])


def numpy_gaussian(params, normalizer, obs, goal, min_log_std=CONFIG.min_log_std):
  """(mean, std) of the policy in the raw output space, in float64."""
  f64 = lambda a: np.asarray(a, np.float64)
  x = np.concatenate([(obs - f64(normalizer.obs.mean)) / f64(normalizer.obs.std),
                      (goal - f64(normalizer.goal.mean)) / f64(normalizer.goal.std)], -1)
  mu = numpy_mlp(params['mlp'], x)
  m, s = f64(normalizer.output.mean), f64(normalizer.output.std)
  std = s * np.exp(np.maximum(f64(params['log_std']), min_log_std))
  return m + s * mu, np.broadcast_to(std, mu.shape)


def numpy_log_density(y, mean, std):
  return np.sum(-0.5 * ((y - mean) / std)**2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1)


def numpy_kl(mean_p, std_p, mean_q, std_q):
  return np.sum(np.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q)**2) / (2 * std_q**2) - 0.5, -1)


# --- normalizers ----------------------------------------------------------------------------------


def test_relative_goal_input_is_the_offset_over_the_shared_state_prefix():
  policy, params, normalizer, obs, goal = random_setup(3)
  relative = normalizer.replace(relative_goal=True)
  offset = goal.copy()
  offset[..., :GOAL] -= obs[..., :GOAL]  # GOAL < OBS: the whole goal is a state
  mean, _ = policy.apply(params, relative, obs, goal)
  np.testing.assert_allclose(mean, numpy_gaussian(params, normalizer, obs, offset)[0], rtol=2e-4, atol=2e-5)
  # A goal longer than the state (the AW-Opt critic's [goal, action]) keeps its tail as it is.
  long_goal = np.concatenate([obs, goal], -1)
  want = np.concatenate([np.zeros_like(obs), goal], -1)
  np.testing.assert_allclose(relative.goal_input(jnp.asarray(obs), jnp.asarray(long_goal)), want, atol=1e-6)
  # One goal for a batch of observations broadcasts like the absolute input.
  np.testing.assert_allclose(relative.goal_input(jnp.asarray(obs), jnp.asarray(goal[0])), goal[0] - obs[:, :GOAL],
                             atol=1e-6)



def test_ignored_goal_dims_are_zeroed_after_normalization():
  """The network sees the normalized goal with its first `ignored_goal_dims` dims at 0 (their
  normalized mean): changing them changes nothing, changing any other dim changes the output."""
  policy, params, normalizer, obs, goal = random_setup(3)
  ignoring = normalizer.replace(ignored_goal_dims=2)
  seen = goal.copy()
  seen[..., :2] = np.asarray(normalizer.goal.mean[:2])  # normalizes to 0
  mean, _ = policy.apply(params, ignoring, obs, goal)
  np.testing.assert_allclose(mean, numpy_gaussian(params, normalizer, obs, seen)[0], rtol=2e-4, atol=2e-5)
  moved = goal.copy()
  moved[..., :2] += 10.0
  np.testing.assert_array_equal(policy.apply(params, ignoring, obs, moved)[0], mean)
  moved[..., 2] += 1.0
  assert np.abs(np.asarray(policy.apply(params, ignoring, obs, moved)[0]) - np.asarray(mean)).min() > 0


def test_fit_normalizer_matches_numpy_and_floors_constant_dims():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 5.0, size=(3, 40, 6))
  x[..., 4] = 1.25  # an object the data never moves
  x[..., 5] *= 1e-4
  normalizer = networks.fit_normalizer(x.astype(np.float32), min_std=1e-2)
  flat = x.reshape(-1, 6)
  want_std = flat.std(0)
  want_std[4:] = 1e-2
  np.testing.assert_allclose(normalizer.mean, flat.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(normalizer.std, want_std, rtol=1e-5)
  assert normalizer.mean.dtype == normalizer.std.dtype == jnp.float32
  z = normalizer.normalize(jnp.asarray(x, jnp.float32))
  assert np.all(np.isfinite(z))
  np.testing.assert_allclose(np.asarray(z)[..., :4].reshape(-1, 4).std(0), 1.0, rtol=1e-4)
  np.testing.assert_allclose(normalizer.denormalize(z), x, rtol=1e-5, atol=1e-5)


def test_identity_normalizer():
  x = jnp.arange(12.0).reshape(4, 3)
  normalizer = networks.identity_normalizer(3)
  np.testing.assert_array_equal(normalizer.normalize(x), x)
  np.testing.assert_array_equal(normalizer.denormalize(x), x)


@pytest.mark.parametrize('x, min_std, match', [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), 1e-2, 'non-finite'),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), 1e-2, 'non-finite'),
    (np.zeros((0, 3)), 1e-2, 'non-empty'),
    (np.zeros(3), 1e-2, 'non-empty'),
    (np.ones((2, 3)), 0.0, 'min_std'),
])
def test_fit_normalizer_rejects(x, min_std, match):
  with pytest.raises(ValueError, match=match):
    networks.fit_normalizer(x, min_std)


# --- policy ---------------------------------------------------------------------------------------


def test_apply_and_log_prob_match_numpy_densities_in_the_raw_output_space():
  policy, params, normalizer, obs, goal = random_setup(1, batch=(2, 7))
  want_mean, want_std = numpy_gaussian(params, normalizer, obs, goal)
  mean, log_std = policy.apply(params, normalizer, obs, goal)
  assert mean.shape == log_std.shape == (2, 7, OUT)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.exp(log_std), want_std, rtol=1e-5)
  y = want_mean + want_std * np.random.default_rng(2).normal(scale=2.0, size=want_mean.shape)
  log_prob = policy.log_prob(params, normalizer, obs, goal, y.astype(np.float32))
  assert log_prob.shape == (2, 7)
  np.testing.assert_allclose(log_prob, numpy_log_density(y, want_mean, want_std), rtol=1e-4, atol=1e-4)


def test_log_std_is_floored():
  policy, params, normalizer, obs, goal = random_setup(3)
  _, log_std = policy.apply(params, normalizer, obs, goal)
  want = np.maximum([-4.0, -0.5, 0.7], CONFIG.min_log_std) + np.log(np.float64(normalizer.output.std))
  np.testing.assert_allclose(log_std, np.broadcast_to(want, log_std.shape), rtol=1e-6, atol=1e-6)
  assert want[0] == pytest.approx(-3.0 + np.log(normalizer.output.std[0]))


def test_relative_output_is_the_observation_plus_the_offset():
  """With `relative_output` (the high level's subgoal) the mean is obs + the float64 reference's mean,
  with the same std, and the density is the Gaussian's about that mean; an output that is not a state
  is refused."""
  rng = np.random.default_rng(8)
  policy = networks.make_policy(OBS, GOAL, OBS, CONFIG)
  params = jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype), policy.init(jax.random.key(8)))
  normalizer = networks.PolicyNormalizer(*(random_normalizer(rng, d) for d in (OBS, GOAL, OBS)), relative_output=True)
  obs, goal = (np.asarray(rng.normal(size=(6, d)), np.float32) for d in (OBS, GOAL))
  mean, log_std = policy.apply(params, normalizer, obs, goal)
  offset, std = numpy_gaussian(params, normalizer, obs, goal)
  np.testing.assert_allclose(mean, obs + offset, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.exp(np.float64(log_std)), std, rtol=1e-5)
  y = np.asarray(obs + offset + std * rng.normal(size=offset.shape), np.float32)
  np.testing.assert_allclose(policy.log_prob(params, normalizer, obs, goal, y),
                             numpy_log_density(np.float64(y), obs + offset, std), rtol=1e-4, atol=1e-4)
  actions = networks.make_policy(OBS, GOAL, OUT, CONFIG)
  with pytest.raises(ValueError, match='relative output'):
    actions.apply(actions.init(jax.random.key(0)), normalizer.replace(output=networks.identity_normalizer(OUT)), obs, goal)


def test_init_starts_near_the_output_mean_with_init_log_std():
  rng = np.random.default_rng(4)
  obs, goal = rng.normal(size=(64, OBS)), rng.normal(size=(64, GOAL))
  identity = networks.PolicyNormalizer(*(networks.identity_normalizer(d) for d in (OBS, GOAL, OUT)))
  means = {}
  for scale in (1e-2, 1.0):
    config = networks.PolicyConfig(hidden=(16, 8), init_log_std=-0.5, last_layer_scale=scale)
    policy = networks.make_policy(OBS, GOAL, OUT, config)
    params = policy.init(jax.random.key(0))
    np.testing.assert_array_equal(params['log_std'], np.full(OUT, -0.5, np.float32))
    means[scale], log_std = policy.apply(params, identity, obs, goal)
    np.testing.assert_allclose(log_std, -0.5)
  # Same key, same draws: the scaled last layer is exactly 1e-2 of the default one (zero biases).
  np.testing.assert_allclose(means[1e-2], 1e-2 * means[1.0], rtol=1e-4, atol=1e-8)
  assert np.abs(means[1e-2]).max() < 0.05 < np.abs(means[1.0]).max()


def test_samples_have_the_mean_and_std_of_apply():
  policy, params, normalizer, obs, goal = random_setup(5, batch=())
  n = 20_000
  samples = policy.sample(params, normalizer, np.broadcast_to(obs, (n, OBS)), goal, jax.random.key(1))
  mean, log_std = policy.apply(params, normalizer, obs, goal)
  std = np.exp(np.float64(log_std))
  # 5 standard errors: of the mean std/sqrt(n), of the std about std/sqrt(2n).
  np.testing.assert_array_less(np.abs(np.float64(samples).mean(0) - mean), 5 * std / np.sqrt(n))
  np.testing.assert_array_less(np.abs(np.float64(samples).std(0) - std), 5 * std / np.sqrt(2 * n))


def test_policy_inference_function():
  policy, params, normalizer, obs, goal = random_setup(6)
  act = policy.policy(params, normalizer)
  key = jax.random.key(7)
  np.testing.assert_array_equal(act(obs, goal, key, deterministic=True), policy.apply(params, normalizer, obs, goal)[0])
  np.testing.assert_array_equal(act(obs, goal, key), act(obs, goal, key))
  np.testing.assert_array_equal(act(obs, goal, key), policy.sample(params, normalizer, obs, goal, key))
  assert np.all(np.asarray(act(obs, goal, key)) != np.asarray(act(obs, goal, jax.random.key(8))))


def test_kl_matches_closed_form_and_monte_carlo():
  policy, old, normalizer, obs, goal = random_setup(9)
  rng = np.random.default_rng(10)
  new = jax.tree.map(lambda p: p + jnp.asarray(0.1 * rng.normal(size=p.shape), p.dtype), old)
  np.testing.assert_allclose(policy.kl(old, old, normalizer, obs, goal), 0.0, atol=1e-6)
  kl = policy.kl(old, new, normalizer, obs, goal)
  assert kl.shape == obs.shape[:-1]
  want = numpy_kl(*numpy_gaussian(old, normalizer, obs, goal), *numpy_gaussian(new, normalizer, obs, goal))
  assert np.all(want > 1e-3)
  np.testing.assert_allclose(kl, want, rtol=1e-4, atol=1e-6)
  # E_old[log p_old - log p_new] over samples of the first input.
  n = 50_000
  obs_n, goal_n = np.broadcast_to(obs[0], (n, OBS)), np.broadcast_to(goal[0], (n, GOAL))
  y = policy.sample(old, normalizer, obs_n, goal_n, jax.random.key(11))
  diff = np.float64(policy.log_prob(old, normalizer, obs_n, goal_n, y) - policy.log_prob(new, normalizer, obs_n, goal_n, y))
  assert abs(diff.mean() - want[0]) < 5 * diff.std() / np.sqrt(n)


def test_jit_and_vmap_match_per_example_apply():
  policy, params, normalizer, obs, goal = random_setup(12)
  mean, log_std = jax.jit(policy.apply)(params, normalizer, obs, goal)
  vmapped = jax.vmap(policy.apply, in_axes=(None, None, 0, 0))(params, normalizer, obs, goal)
  for i in range(len(obs)):
    one = policy.apply(params, normalizer, obs[i], goal[i])
    for got in (mean[i], vmapped[0][i]):
      np.testing.assert_allclose(got, one[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_std[i], one[1], rtol=1e-6)
  # One goal serves a batch of observations.
  shared = policy.apply(params, normalizer, obs, goal[0])[0]
  np.testing.assert_allclose(shared, policy.apply(params, normalizer, obs, np.broadcast_to(goal[0], goal.shape))[0])


def test_bad_shapes_raise():
  policy, params, normalizer, obs, goal = random_setup(13)
  mean = np.zeros((6, OUT), np.float32)
  with pytest.raises(ValueError, match=r'obs must end in 5, got \(6, 4\)'):
    policy.apply(params, normalizer, obs[:, :4], goal)
  with pytest.raises(ValueError, match='goal must end in 4'):
    policy.apply(params, normalizer, obs, np.zeros(5))
  with pytest.raises(ValueError, match='output must end in 3'):
    policy.log_prob(params, normalizer, obs, goal, mean[:, :2])
  with pytest.raises(ValueError, match='output normalizer must be'):
    policy.apply(params, normalizer.replace(output=networks.identity_normalizer(OBS)), obs, goal)
  with pytest.raises(ValueError):  # leading dims that do not broadcast
    policy.apply(params, normalizer, obs, goal[:4])
  for dims in ((0, GOAL, OUT), (OBS, GOAL, -1)):
    with pytest.raises(ValueError, match='obs_dim, goal_dim and output_dim'):
      networks.make_policy(*dims)
  with pytest.raises(ValueError, match='hidden sizes'):
    networks.make_policy(OBS, GOAL, OUT, networks.PolicyConfig(hidden=(16, 0)))


# --- value ----------------------------------------------------------------------------------------


def test_value_network():
  _, _, normalizer, obs, goal = random_setup(14, batch=(2, 3))
  value = networks.make_value(OBS, GOAL, hidden=[8, 8])
  assert value.hidden == (8, 8)
  params = value.init(jax.random.key(0))
  v = value.apply(params, normalizer, obs, goal)
  assert v.shape == (2, 3)
  x = np.concatenate([normalizer.obs.normalize(obs), normalizer.goal.normalize(goal)], -1)
  np.testing.assert_allclose(v, numpy_mlp(params, np.float64(x))[..., 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(value.apply)(params, normalizer, obs, goal), v, rtol=1e-6)
  with pytest.raises(ValueError, match='obs must end in 5'):
    value.apply(params, normalizer, goal, goal)
  with pytest.raises(ValueError, match='hidden sizes'):
    networks.make_value(OBS, GOAL, hidden=(0,))


def test_ensemble_acts_with_its_members_mean_mean_and_log_std():
  """An EnsemblePolicy of three perturbed policies against the float64 reference of each member: the
  mean of their means and of their log_stds; its density, samples and KL are the Gaussian's about
  those; one member is that member; params not stacked over the members are refused."""
  setups = [random_setup(seed) for seed in (11, 12, 13)]
  policy, _, normalizer, obs, goal = setups[0]
  members = [params for _, params, _, _, _ in setups]
  ensemble = networks.EnsemblePolicy(OBS, GOAL, OUT, CONFIG, members=3)
  params = networks.stack_members(members)
  references = [numpy_gaussian(p, normalizer, obs, goal) for p in members]
  want_mean = np.mean([m for m, _ in references], 0)
  want_std = np.exp(np.mean([np.log(s) for _, s in references], 0))
  mean, log_std = ensemble.apply(params, normalizer, obs, goal)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.exp(log_std), want_std, rtol=1e-5)
  y = (want_mean + want_std).astype(np.float32)
  np.testing.assert_allclose(ensemble.log_prob(params, normalizer, obs, goal, y),
                             numpy_log_density(y, want_mean, want_std), rtol=1e-4, atol=1e-4)
  act = ensemble.policy(params, normalizer)
  np.testing.assert_allclose(act(obs, goal, jax.random.key(0), deterministic=True), want_mean, rtol=1e-5, atol=1e-5)
  samples = jax.vmap(lambda k: act(obs[0], goal[0], k))(jax.random.split(jax.random.key(1), 4000))
  np.testing.assert_allclose(samples.mean(0), want_mean[0], atol=4 * want_std[0].max() / np.sqrt(4000) * 1.5)
  np.testing.assert_allclose(ensemble.kl(params, params, normalizer, obs, goal), 0.0, atol=1e-5)
  one = networks.EnsemblePolicy(OBS, GOAL, OUT, CONFIG, members=1)
  np.testing.assert_allclose(one.apply(networks.stack_members(members[:1]), normalizer, obs, goal)[0],
                             policy.apply(members[0], normalizer, obs, goal)[0], rtol=1e-6, atol=1e-6)
  assert jax.tree.leaves(ensemble.init(jax.random.key(0)))[0].shape[0] == 3
  with pytest.raises(ValueError, match='stacked over the 3 members'):
    ensemble.apply(members[0], normalizer, obs, goal)
  with pytest.raises(ValueError, match='members'):
    networks.EnsemblePolicy(OBS, GOAL, OUT, CONFIG, members=0)
