"""Goal-conditioned networks: the Gaussian policy both levels use (the low level's actions, the high
level's subgoals in state space), its ensemble, the value baseline, and the normalizers around them.

A network is a frozen description (dims and config) with pure `init(key) -> params` and
`apply(params, normalizer, ...)`; params are plain pytrees and normalizers are fitted once from data
and passed beside them, never trained. The policy follows mjrl's (DESIGN.md, NPG reference numbers):
a tanh MLP for the mean, a state-independent learned log_std with a floor, and a small last layer so
that a fresh policy starts near the output normalizer's mean. `mlp_activations` and
`mlp_gauss_newton` run that MLP layer by layer on its params, for the Fisher's products (rpl_jax.npg).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Params = dict[str, Any]


# --- normalizers ----------------------------------------------------------------------------------


@struct.dataclass
class Normalizer:
  """An affine map to unit scale: normalize(x) = (x - mean) / std."""
  mean: jax.Array  # [D]
  std: jax.Array  # [D], > 0

  def normalize(self, x: jax.Array) -> jax.Array:
    return (x - self.mean) / self.std

  def denormalize(self, x: jax.Array) -> jax.Array:
    return x * self.std + self.mean


def fit_normalizer(x, min_std: float = 1e-2) -> Normalizer:
  """Mean and std of x [..., N, D] over all leading axes. The std is floored at `min_std` so that a
  dimension the data never moves (an untouched object) does not blow up under normalization."""
  x = np.asarray(x, np.float64)
  if not min_std > 0:
    raise ValueError(f'min_std must be > 0, got {min_std}.')
  if x.ndim < 2 or x.size == 0:
    raise ValueError(f'need a non-empty array of samples [..., N, D], got shape {x.shape}.')
  if not np.isfinite(x).all():
    raise ValueError(f'cannot fit a normalizer to non-finite data ({np.sum(~np.isfinite(x))} entries).')
  x = x.reshape(-1, x.shape[-1])
  return Normalizer(jnp.asarray(x.mean(0), jnp.float32), jnp.asarray(np.maximum(x.std(0), min_std), jnp.float32))


def identity_normalizer(dim: int) -> Normalizer:
  return Normalizer(jnp.zeros(dim, jnp.float32), jnp.ones(dim, jnp.float32))


@struct.dataclass
class PolicyNormalizer:
  """A network's input and output maps. With `relative_goal`, the goal enters as its offset from the
  observation over their shared state prefix (the first min(obs, goal) dims: goal - obs there), and
  the `goal` normalizer is fitted to those offsets. With `relative_output` (an output in state space,
  the high level's subgoal), the network predicts the output's offset from the observation, and the
  `output` normalizer is fitted to those offsets: mean = obs + output.denormalize(MLP(inputs)).
  The goal's first `ignored_goal_dims` dims are zeroed after normalization: the network never sees them."""
  obs: Normalizer  # the observation input
  goal: Normalizer  # the goal input
  output: Normalizer  # identity for actions; the state normalizer (or the offsets' one) for subgoals
  relative_goal: bool = struct.field(pytree_node=False, default=False)
  relative_output: bool = struct.field(pytree_node=False, default=False)
  ignored_goal_dims: int = struct.field(pytree_node=False, default=0)

  def goal_input(self, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """The goal as the network sees it (before normalization)."""
    if not self.relative_goal:
      return goal
    shared = min(jnp.shape(obs)[-1], jnp.shape(goal)[-1])
    rest = jnp.zeros(jnp.shape(obs)[:-1] + (jnp.shape(goal)[-1] - shared,), jnp.result_type(obs))
    return goal - jnp.concatenate([obs[..., :shared], rest], -1)


# --- networks -------------------------------------------------------------------------------------


class MLP(nn.Module):
  """tanh hidden layers, linear output whose initial kernel is scaled by `last_layer_scale`."""
  hidden: tuple[int, ...]
  output_dim: int
  last_layer_scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for size in self.hidden:
      x = jnp.tanh(nn.Dense(size)(x))
    # lecun_normal (Dense's default) times last_layer_scale; biases start at zero.
    kernel_init = nn.initializers.variance_scaling(self.last_layer_scale**2, 'fan_in', 'truncated_normal')
    return nn.Dense(self.output_dim, kernel_init=kernel_init)(x)


# MLP layer by layer on its flax params, for the Fisher's products (rpl_jax.npg): the same operations as
# MLP.__call__; tests/test_npg.py checks the products against autodiff of GaussianPolicy.apply.


def _mlp_layer_names(mlp: Params) -> list[str]:
  """MLP's Dense layers (flax names), input first."""
  return [f'Dense_{i}' for i in range(len(mlp))]


def mlp_activations(mlp: Params, x: jax.Array) -> list[jax.Array]:
  """[x, h_1, ..., h_L]: the MLP's input x [..., in] and its tanh layers' outputs, by the same
  operations as MLP (flax's Dense), so that XLA computes them once for both."""
  activations = [x]
  for name in _mlp_layer_names(mlp)[:-1]:
    activations.append(jnp.tanh(activations[-1] @ mlp[name]['kernel'] + mlp[name]['bias']))
  return activations


def mlp_gauss_newton(mlp: Params, tangent: Params, activations: list[jax.Array], weight: jax.Array) -> Params:
  """J^T diag(weight) J tangent summed over a block of samples, J the Jacobian of MLP's output
  in its params, from the block's activations [x, h_1, ..., h_L], each feature-major [width, samples].
  The JVP: layer l's pre-activation z_l = W_l^T h_{l-1} + b_l has the tangent
  dz_l = dW_l^T h_{l-1} + db_l + W_l^T dh_{l-1} (dh_0 = 0: x is data), and dh_l = (1 - h_l^2) dz_l
  (tanh' = 1 - tanh^2). Its transpose, from the output's cotangent c = weight * dz_out: layer l gets
  h_{l-1} c_l^T on W_l and sum(c_l) on b_l, and c_{l-1} = (1 - h_{l-1}^2) W_l c_l."""
  names = _mlp_layer_names(mlp)
  dh = None  # the previous layer's output tangent
  for l, name in enumerate(names):
    dz = tangent[name]['kernel'].T @ activations[l] + tangent[name]['bias'][:, None]
    if l:
      dz = dz + mlp[name]['kernel'].T @ dh
    if l < len(names) - 1:
      dh = (1 - activations[l + 1]**2) * dz
  c = weight[:, None] * dz
  product = {}
  for l in reversed(range(len(names))):
    product[names[l]] = {'kernel': activations[l] @ c.T, 'bias': jnp.sum(c, -1)}
    if l:
      c = (1 - activations[l]**2) * (mlp[names[l]]['kernel'] @ c)
  return product


def _check_sizes(what: str, sizes: Sequence[int]) -> None:
  if any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
    raise ValueError(f'{what} must be positive ints, got {tuple(sizes)}.')


def _check_dim(name: str, x, dim: int) -> None:
  shape = jnp.shape(x)
  if not shape or shape[-1] != dim:
    raise ValueError(f'{name} must end in {dim}, got {shape}.')


def _check_normalizer(name: str, normalizer: Normalizer, dim: int) -> None:
  if jnp.shape(normalizer.mean) != (dim,) or jnp.shape(normalizer.std) != (dim,):
    raise ValueError(f'the {name} normalizer must be [{dim}], got mean {jnp.shape(normalizer.mean)} '
                     f'and std {jnp.shape(normalizer.std)}.')


def _inputs(normalizer: PolicyNormalizer, obs: jax.Array, goal: jax.Array, obs_dim: int,
            goal_dim: int) -> jax.Array:
  """concat(normalized obs, normalized goal) [..., obs_dim + goal_dim], leading dims broadcast (one
  goal may serve a batch of observations)."""
  _check_dim('obs', obs, obs_dim)
  _check_dim('goal', goal, goal_dim)
  _check_normalizer('obs', normalizer.obs, obs_dim)
  _check_normalizer('goal', normalizer.goal, goal_dim)
  batch = jnp.broadcast_shapes(jnp.shape(obs)[:-1], jnp.shape(goal)[:-1])
  goal = normalizer.goal.normalize(normalizer.goal_input(obs, goal))
  goal = jnp.where(jnp.arange(goal_dim) < normalizer.ignored_goal_dims, 0.0, goal)
  return jnp.concatenate([jnp.broadcast_to(normalizer.obs.normalize(obs), batch + (obs_dim,)),
                          jnp.broadcast_to(goal, batch + (goal_dim,))], -1)


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  hidden: tuple[int, ...] = (256, 256)
  init_log_std: float = 0.0
  min_log_std: float = -3.0  # floor on the learned log_std (in the normalized output space)
  last_layer_scale: float = 1e-2

  def __post_init__(self):
    object.__setattr__(self, 'hidden', tuple(self.hidden))  # hashable, so jit can take it as static
    _check_sizes('hidden sizes', self.hidden)


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
  """pi(output | obs, goal): a diagonal Gaussian in the raw output space. The MLP maps the normalized
  inputs to a normalized mean mu; the output normalizer maps mu and the learned std back, so that
  mean = output.mean + output.std * mu (plus obs with the normalizer's `relative_output`) and
  log_std = max(log_std, min_log_std) + log(output.std)."""
  obs_dim: int
  goal_dim: int
  output_dim: int
  config: PolicyConfig = PolicyConfig()

  def __post_init__(self):
    _check_sizes('obs_dim, goal_dim and output_dim', (self.obs_dim, self.goal_dim, self.output_dim))

  @property
  def _mlp(self) -> MLP:
    return MLP(self.config.hidden, self.output_dim, self.config.last_layer_scale)

  def init(self, key: jax.Array) -> Params:
    """{'mlp': the mean MLP's flax params, 'log_std': [output_dim]}."""
    mlp = self._mlp.init(key, jnp.zeros(self.obs_dim + self.goal_dim))['params']
    return {'mlp': mlp, 'log_std': jnp.full(self.output_dim, self.config.init_log_std, jnp.float32)}

  def inputs(self, normalizer: PolicyNormalizer, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """The MLP's input: concat(normalized obs, normalized goal) [..., obs_dim + goal_dim]."""
    return _inputs(normalizer, obs, goal, self.obs_dim, self.goal_dim)

  def apply(self, params: Params, normalizer: PolicyNormalizer, obs: jax.Array,
            goal: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, log_std), both [..., output_dim], for obs [..., obs_dim] and goal [..., goal_dim]."""
    _check_normalizer('output', normalizer.output, self.output_dim)
    if normalizer.relative_output and self.output_dim != self.obs_dim:
      raise ValueError(f'a relative output is an offset from the observation: output_dim {self.output_dim} '
                       f'must equal obs_dim {self.obs_dim}.')
    mu = self._mlp.apply({'params': params['mlp']}, self.inputs(normalizer, obs, goal))
    out = normalizer.output
    mean = out.denormalize(mu) + obs if normalizer.relative_output else out.denormalize(mu)
    log_std = jnp.maximum(params['log_std'], self.config.min_log_std) + jnp.log(out.std)
    return mean, jnp.broadcast_to(log_std, mu.shape)

  def log_prob(self, params: Params, normalizer: PolicyNormalizer, obs: jax.Array, goal: jax.Array,
               output: jax.Array) -> jax.Array:
    """[...]: log density of `output` [..., output_dim] (raw space), summed over its dims."""
    _check_dim('output', output, self.output_dim)
    mean, log_std = self.apply(params, normalizer, obs, goal)
    z = (output - mean) * jnp.exp(-log_std)
    return -0.5 * jnp.sum(z**2 + 2 * log_std + jnp.log(2 * jnp.pi), -1)

  def sample(self, params: Params, normalizer: PolicyNormalizer, obs: jax.Array, goal: jax.Array,
             key: jax.Array) -> jax.Array:
    mean, log_std = self.apply(params, normalizer, obs, goal)
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

  def kl(self, params_old: Params, params_new: Params, normalizer: PolicyNormalizer, obs: jax.Array,
         goal: jax.Array) -> jax.Array:
    """[...]: KL(pi_old || pi_new) in closed form, summed over output dims."""
    mean_old, log_std_old = self.apply(params_old, normalizer, obs, goal)
    mean_new, log_std_new = self.apply(params_new, normalizer, obs, goal)
    ratio = jnp.exp(2 * (log_std_old - log_std_new))  # var_old / var_new
    z = (mean_old - mean_new) * jnp.exp(-log_std_new)
    return 0.5 * jnp.sum(ratio + z**2 - 1 - jnp.log(ratio), -1)

  def policy(self, params: Params, normalizer: PolicyNormalizer) -> Callable[..., jax.Array]:
    """The inference function `(obs, goal, key, deterministic=False) -> output`; the mean when
    deterministic (the key is then unused)."""
    def act(obs: jax.Array, goal: jax.Array, key: jax.Array, deterministic: bool = False) -> jax.Array:
      if deterministic:
        return self.apply(params, normalizer, obs, goal)[0]
      return self.sample(params, normalizer, obs, goal, key)

    return act


@dataclasses.dataclass(frozen=True)
class EnsemblePolicy(GaussianPolicy):
  """`members` GaussianPolicies of one shape that share a normalizer, acting as one Gaussian: its mean
  is the mean of the members' means and its log_std the mean of their log_stds. Params are the
  members' stacked on a leading axis (`stack_members`). Averaging removes the members' independent
  closed-loop errors (BUILD_NOTES, "Ensembles of RIL agents"). For evaluation: RRF's Fisher products
  are written for one MLP."""
  members: int = dataclasses.field(kw_only=True)

  def __post_init__(self):
    super().__post_init__()
    _check_sizes('members', (self.members,))

  def init(self, key: jax.Array) -> Params:
    return jax.vmap(lambda k: GaussianPolicy.init(self, k))(jax.random.split(key, self.members))

  def apply(self, params: Params, normalizer: PolicyNormalizer, obs: jax.Array,
            goal: jax.Array) -> tuple[jax.Array, jax.Array]:
    if any(leaf.shape[:1] != (self.members,) for leaf in jax.tree.leaves(params)):
      raise ValueError(f'ensemble params must be stacked over the {self.members} members on their leading axis.')
    means, log_stds = jax.vmap(lambda p: GaussianPolicy.apply(self, p, normalizer, obs, goal))(params)
    return jnp.mean(means, 0), jnp.mean(log_stds, 0)


def stack_members(params: Sequence[Params]) -> Params:
  """The params of an EnsemblePolicy (or of an agent's ensemble) from its members' params."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)


def make_policy(obs_dim: int, goal_dim: int, output_dim: int,
                config: PolicyConfig = PolicyConfig()) -> GaussianPolicy:
  return GaussianPolicy(obs_dim, goal_dim, output_dim, config)


@dataclasses.dataclass(frozen=True)
class ValueNetwork:
  """V(obs, goal): a tanh MLP on the normalized inputs (the policy normalizer's obs and goal)."""
  obs_dim: int
  goal_dim: int
  hidden: tuple[int, ...] = (128, 128)

  def __post_init__(self):
    _check_sizes('obs_dim and goal_dim', (self.obs_dim, self.goal_dim))
    object.__setattr__(self, 'hidden', tuple(self.hidden))
    _check_sizes('hidden sizes', self.hidden)

  @property
  def _mlp(self) -> MLP:
    return MLP(self.hidden, 1)

  def init(self, key: jax.Array) -> Params:
    return self._mlp.init(key, jnp.zeros(self.obs_dim + self.goal_dim))['params']

  def apply(self, params: Params, normalizer: PolicyNormalizer, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """[...]: values for obs [..., obs_dim] and goal [..., goal_dim]."""
    x = _inputs(normalizer, obs, goal, self.obs_dim, self.goal_dim)
    return self._mlp.apply({'params': params}, x)[..., 0]


def make_value(obs_dim: int, goal_dim: int, hidden: tuple[int, ...] = (128, 128)) -> ValueNetwork:
  return ValueNetwork(obs_dim, goal_dim, hidden)
