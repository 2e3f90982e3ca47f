"""Imitation training: relay imitation learning (RIL) and the flat GCBC baselines, one compiled step.

RIL maximises the paper's Eq. 1, E_{D_l}[log pi_l(a | s, s_g^l)] + E_{D_h}[log pi_h(s_g^l | s, s_g^h)],
over tuples drawn on the device by the relay relabeling samplers (rpl_jax.relabel): the low level on
Algorithm 2's (s_t, a_t, s_{t+w}), w <= W_l, the high level on Algorithm 3's
(s_t, s_{t+min(w, W_l)}, s_{t+w}), w <= W_h. The baselines train one flat goal-conditioned policy:
`gcbc` with relabeling (Algorithm 2's tuples over one window, W_h) and `gcbc_final` without (the
goal is the demo's final state).

`make_train_step` returns one pure function that runs `updates_per_step` Adam updates of every
level per call (a `lax.scan` over minibatches that the samplers draw inside the step); jit it with
the state donated (`jit_train_step`). Shapes never change between calls, so it compiles once.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from envs.kitchen import ACTION_DIM, tasks
from envs.kitchen.env import corrected_action
from rpl_jax import networks, parallel, relabel
from rpl_jax.relabel import RelabelConfig
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.rollout import Agent

METHODS = ('ril', 'gcbc', 'gcbc_final', 'oracle')
HIERARCHICAL = ('ril', 'oracle')  # the methods that train two levels


@dataclasses.dataclass(frozen=True)
class BCConfig:
  method: str = 'ril'  # one of METHODS
  relabel: RelabelConfig = RelabelConfig()
  policy: networks.PolicyConfig = networks.PolicyConfig()
  batch_size: int = 256  # tuples per level per update
  updates_per_step: int = 50  # gradient updates per call of the compiled step (K)
  learning_rate: float = 1e-3
  max_grad_norm: float = 10.0
  # Goals enter every network as their offset from the state (networks.PolicyNormalizer.relative_goal).
  relative_goals: bool = False
  # The high level predicts its subgoal's offset from the state (networks.PolicyNormalizer.relative_output),
  # its output normalizer fitted to Algorithm 3's s_{t+min(w, W_l)} - s_t: an element the next W_l steps
  # leave alone is then predicted as staying where it is, instead of reproduced through the MLP.
  relative_subgoals: bool = False
  # The level that the task's goal conditions (RIL's high level, the baselines' one policy) does not see
  # the goal's robot joints (networks.PolicyNormalizer.ignored_goal_dims): a compound goal says where
  # the objects must be, and its arm posture (the reset one) is no target (BUILD_NOTES, "Object goals").
  object_goals: bool = False
  # Std (rad; m for the fingers) of a Gaussian displacement of the robot joints in half the action
  # level's tuples (RIL's low level, the baselines' one policy), with the labels corrected to command
  # the same position targets (`corrected`). 0: off. The RRF phase's DAPG term draws undisplaced tuples.
  corrective_noise: float = 0.0
  # Std of Gaussian noise added to the robot joints of every goal the action level trains on (the labels
  # kept), so it learns to act on subgoals as imprecise as a learned high level's (`noisy_goals`): rad
  # on the 7 arm joints, m on the 2 fingers. 0: off. Like corrective_noise, not applied to the RRF
  # phase's DAPG term.
  subgoal_noise: float = 0.0
  subgoal_finger_noise: float = 0.0
  # Per-update decay of the exponential moving average of the parameters that the trained agent acts
  # with (BCState.average), e.g. 0.999: about the last 1,000 updates. Keep that span short next to the
  # training (BUILD_NOTES, "Weight averaging"). 0: the last parameters.
  average_decay: float = 0.0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'unknown method {self.method!r}; choose from {METHODS}.')
    for name in ('batch_size', 'updates_per_step'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    for name in ('corrective_noise', 'subgoal_noise', 'subgoal_finger_noise'):
      if not 0 <= getattr(self, name) < float('inf'):
        raise ValueError(f'{name} must be a finite std >= 0, got {getattr(self, name)}.')
    if self.relative_subgoals and self.method not in HIERARCHICAL:
      raise ValueError(f'relative_subgoals is for a high level; method {self.method!r} has none.')
    if not 0 <= self.average_decay < 1:
      raise ValueError(f'average_decay must be in [0, 1), got {self.average_decay}.')
    if not (self.learning_rate > 0 and self.max_grad_norm > 0):
      raise ValueError(f'learning_rate and max_grad_norm must be positive, got {self.learning_rate} and '
                       f'{self.max_grad_norm}.')


def config_from_dict(fields: dict[str, Any]) -> BCConfig:
  """The BCConfig whose dataclasses.asdict is `fields` (as experiments/train_ril.py saves them); a
  field missing from it (saved before the field existed) takes its default."""
  return BCConfig(**{**fields, 'relabel': RelabelConfig(**fields['relabel']),
                     'policy': networks.PolicyConfig(**fields['policy'])})


@struct.dataclass
class BCState:
  params: dict[str, Any]  # per level ('low', 'high'): what the optimizer trains
  # The parameters to act with: their moving average over updates (BCConfig.average_decay), equal to
  # `params` with decay 0. Evaluation, the checkpointed policy and the later phases use these.
  average: dict[str, Any]
  normalizers: dict[str, networks.PolicyNormalizer]  # per level, fitted to the demos; not trained
  opt_state: Any
  key: jax.Array
  updates: jax.Array  # int32: gradient updates done


def make_agent(config: BCConfig) -> Agent:
  """RIL's two levels, or the baselines' one flat policy, over 30-d states and goals."""
  low = networks.make_policy(tasks.NQ, tasks.NQ, ACTION_DIM, config.policy)
  high = networks.make_policy(tasks.NQ, tasks.NQ, tasks.NQ, config.policy) if config.method in HIERARCHICAL else None
  return Agent(low, high, config.relabel.horizon)


# Relabeled tuples drawn (with a fixed key) to fit a relative goal normalizer.
NORMALIZER_SAMPLES = 65536


def fit_normalizers(agent: Agent, config: BCConfig, data) -> dict[str, networks.PolicyNormalizer]:
  """Per level, the normalizers of its inputs and output, fitted to `data` (what the config's
  samplers draw from: training_data). Observations: the demos' valid states (padding excluded). Goals:
  the same states, or with `relative_goals` the offsets goal - state of NORMALIZER_SAMPLES of the
  level's relabeled tuples. Outputs: none for actions; for the high level's subgoals the state
  normalizer, or with `relative_subgoals` the offsets subgoal - state of those tuples. With
  `object_goals`, the task-goal level ignores its goal's robot joints."""
  demos = data.demos if isinstance(data, relabel.SegmentedDemos) else data
  observations, lengths = np.asarray(demos.observations), np.asarray(demos.lengths)
  valid = np.arange(observations.shape[1])[None, :] <= lengths[:, None]
  states = networks.fit_normalizer(observations[valid])
  draws = samplers(config.method, config.relabel, NORMALIZER_SAMPLES)

  def offsets(level, index):  # of the level's goals (index 1) or targets (2) from its states
    tuples = draws[level].draw(jax.random.key(0), data)
    return networks.fit_normalizer(np.asarray(tuples[index]) - np.asarray(tuples[0]))

  task_level = 'low' if agent.high is None else 'high'

  def normalizer(level, output, relative_output=False):
    goals = offsets(level, 1) if config.relative_goals else states
    ignored = tasks.ROBOT_DOF if config.object_goals and level == task_level else 0
    # Copies: the compiled step donates the state, and a buffer can be donated only once.
    return networks.PolicyNormalizer(*jax.tree.map(jnp.copy, (states, goals, output)),
                                     relative_goal=config.relative_goals, relative_output=relative_output,
                                     ignored_goal_dims=ignored)

  normalizers = {'low': normalizer('low', networks.identity_normalizer(ACTION_DIM))}
  if agent.high is not None:
    subgoals = offsets('high', 2) if config.relative_subgoals else states
    normalizers['high'] = normalizer('high', subgoals, config.relative_subgoals)
  return normalizers


class Sampler(NamedTuple):
  """One level's minibatches: `draw(key, demos) -> (inputs, conditioning, targets)`, uniform over the
  relabeled tuples of `window` (relabel.tuple_counts(lengths, window) per demo)."""
  draw: Callable[[jax.Array, PaddedDemos], tuple[jax.Array, jax.Array, jax.Array]]
  window: int


def samplers(method: str, windows: RelabelConfig, batch_size: int) -> dict[str, Sampler]:
  """Per level of `method`'s agent, its Sampler: RIL's low level Algorithm 2 (W_l) and high level
  Algorithm 3; GCBC Algorithm 2 over W_h; GCBC without relabeling the demo's final state (width-1
  tuples: every step once); oracle segmentation, every step with its segment's end (width 1)."""
  def low(window):
    def draw(key, demos):
      batch = relabel.sample_low(key, demos, window, batch_size)
      return batch.observations, batch.goals, batch.actions
    return Sampler(draw, window)

  def final(key, demos):
    batch = relabel.sample_final(key, demos, batch_size)
    return batch.observations, batch.goals, batch.actions

  def high(key, demos):
    batch = relabel.sample_high(key, demos, windows.window_low, windows.window_high, batch_size)
    return batch.observations, batch.goals, batch.subgoals

  if method == 'ril':
    return {'low': low(windows.window_low), 'high': Sampler(high, windows.window_high)}
  if method == 'gcbc':
    return {'low': low(windows.window_high)}
  if method == 'gcbc_final':
    return {'low': Sampler(final, 1)}
  if method == 'oracle':  # draws from relabel.SegmentedDemos
    def segment(level):
      def draw(key, data):
        low, high = relabel.sample_segments(key, data, batch_size)
        return (low.observations, low.goals, low.actions) if level == 'low' else \
            (high.observations, high.goals, high.subgoals)
      return Sampler(draw, 1)
    return {'low': segment('low'), 'high': segment('high')}
  raise ValueError(f'unknown method {method!r}; choose from {METHODS}.')


def corrected(draw: Callable, noise: float) -> Callable:
  """The action level's `draw` with a random half of its tuples moved off the demos: their robot
  joints displaced by N(0, noise^2) (rad; m for the fingers) and their action labels corrected to
  command the position targets the demonstrator commanded (env.corrected_action), so the labels steer
  back toward the demo. The env's actions are velocity increments on the observed joints, which makes
  this exact for the servo targets; the displaced tuples' hidden joint velocities stay the demo's."""
  def draw_displaced(key, demos):
    key, displacement_key, half_key = jax.random.split(key, 3)
    states, goals, actions = draw(key, demos)
    rows = states.shape[0]
    chosen = jax.random.bernoulli(half_key, 0.5, (rows, 1))
    displacement = jnp.where(chosen, noise * jax.random.normal(displacement_key, (rows, tasks.ROBOT_DOF)), 0.0)
    return (states.at[:, :tasks.ROBOT_DOF].add(displacement), goals,
            jnp.where(chosen, corrected_action(actions, displacement), actions))
  return draw_displaced


def noisy_goals(draw: Callable, noise: float, finger_noise: float = 0.0) -> Callable:
  """The action level's `draw` with N(0, noise^2) (rad) added to the arm joints of every goal and
  N(0, finger_noise^2) (m) to its fingers, the labels kept. Algorithm 2's goals are exact demo states,
  but at run time a learned high level's subgoals miss the demos' arm postures (on our play data by a
  median 0.14-0.23 rad at the worst arm joint: BUILD_NOTES, "Subgoal noise"), so this trains the level
  to act on goals that imprecise."""
  def draw_noisy(key, demos):
    key, noise_key = jax.random.split(key)
    states, goals, actions = draw(key, demos)
    rows = goals.shape[0]
    arm = noise * jax.random.normal(noise_key, (rows, tasks.ARM_DOF))
    finger_key = jax.random.fold_in(noise_key, 1)  # the arm's draw stays what it was without finger noise
    fingers = finger_noise * jax.random.normal(finger_key, (rows, tasks.ROBOT_DOF - tasks.ARM_DOF))
    return states, goals.at[:, :tasks.ROBOT_DOF].add(jnp.concatenate([arm, fingers], -1)), actions
  return draw_noisy


def make_optimizer(config: BCConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate))


def init_state(agent: Agent, config: BCConfig, data, key: jax.Array) -> BCState:
  """Fresh parameters, normalizers fitted to `data` (training_data: what the samplers draw from), and
  the optimizer state."""
  relabel.check_windows(config.relabel, data.lengths)
  key, *level_keys = jax.random.split(key, 1 + len(agent.levels))
  params = {level: network.init(k) for (level, network), k in zip(agent.by_level.items(), level_keys)}
  return BCState(params=params, average=jax.tree.map(jnp.copy, params),
                 normalizers=fit_normalizers(agent, config, data), opt_state=make_optimizer(config).init(params),
                 key=key, updates=jnp.zeros((), jnp.int32))


def make_train_step(agent: Agent, config: BCConfig, mesh=None):
  """`step(state, demos) -> (state, metrics)`: `updates_per_step` updates of every level. Metrics are
  means over those updates: the negative log-likelihood of each level ('nll_low', 'nll_high') and the
  gradient norm. With a `mesh` (rpl_jax.parallel), each minibatch is split over all its devices."""
  draws = {level: sampler.draw for level, sampler in samplers(config.method, config.relabel, config.batch_size).items()}
  if config.corrective_noise:
    draws['low'] = corrected(draws['low'], config.corrective_noise)
  if config.subgoal_noise or config.subgoal_finger_noise:
    draws['low'] = noisy_goals(draws['low'], config.subgoal_noise, config.subgoal_finger_noise)
  optimizer = make_optimizer(config)

  def loss(params, normalizers, batches):
    nll = {level: -jnp.mean(network.log_prob(params[level], normalizers[level], *batches[level]))
           for level, network in agent.by_level.items()}
    return sum(nll.values()), nll

  def update(carry, key):
    params, average, opt_state, normalizers, demos = carry
    keys = dict(zip(agent.levels, jax.random.split(key, len(agent.levels))))
    batches = {level: parallel.shard_batch(draws[level](keys[level], demos), mesh, parallel.AXES)
               for level in agent.levels}
    (_, nll), grads = jax.value_and_grad(loss, has_aux=True)(params, normalizers, batches)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = {f'nll_{level}': value for level, value in nll.items()}
    metrics['grad_norm'] = optax.global_norm(grads)
    params = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: config.average_decay * a + (1 - config.average_decay) * p, average, params)
    return (params, average, opt_state, normalizers, demos), metrics

  def step(state: BCState, demos: PaddedDemos):
    key, *update_keys = jax.random.split(state.key, 1 + config.updates_per_step)
    carry = (state.params, state.average, state.opt_state, state.normalizers, demos)
    (params, average, opt_state, _, _), metrics = jax.lax.scan(update, carry, jnp.stack(update_keys))
    state = state.replace(params=params, average=average, opt_state=opt_state, key=key,
                          updates=state.updates + config.updates_per_step)
    return state, jax.tree.map(jnp.mean, metrics)

  return step


def jit_train_step(agent: Agent, config: BCConfig, mesh=None):
  """The compiled step, with the training state's buffers donated. With a `mesh`, pass the state and
  demos replicated on it (parallel.put); they stay there."""
  step = make_train_step(agent, config, mesh)
  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, donate_argnums=0, out_shardings=parallel.sharding(mesh))


def device_demos(demos: PaddedDemos) -> PaddedDemos:
  """The demos as device arrays, for the samplers."""
  return PaddedDemos(*(jnp.asarray(x) for x in demos))


def training_data(method: str, demos: PaddedDemos, boundaries: np.ndarray | None = None):
  """What `method`'s samplers draw from, on the device: the demos, or for the oracle-segmentation
  baseline the demos with their element boundaries (data.read_element_steps)."""
  if method != 'oracle':
    return device_demos(demos)
  if boundaries is None or np.shape(boundaries)[0] != len(demos.lengths):
    raise ValueError('the oracle-segmentation baseline needs the element boundaries of every demo '
                     '(the generator records them in metadata.json).')
  return relabel.SegmentedDemos(device_demos(demos), jnp.asarray(boundaries, jnp.int32))

