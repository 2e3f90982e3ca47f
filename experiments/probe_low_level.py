"""Is the low level the bottleneck? Trains RIL's low level alone and runs it teacher-forced.

The low level is trained on Algorithm 2's tuples (window W) of all but the last --held_out demos of a
dataset, as RIL trains it. Each held-out demo is then run closed loop from its own reset key (the
dataset's per-demo seeds) toward its own four elements, with the demo's own future state
s_{min(t+W, T)} as the subgoal at step t: a perfect high level, synchronized by time. The demos'
recorded actions in the same harness must complete every element; that check is printed too.
Prints and writes JSON: elements completed per episode (of 4) and per element, the arm's largest
joint deviation from the demo at a few steps, and the fit's mean |action error| over the held-out
tuples. --track_progress replaces the clock by the demo state nearest the arm (a high level that
re-plans); --in_sample trains on the held-out demos too (closed loop on training data).

  python experiments/probe_low_level.py --demos=data/play --out=/tmp/probe.json
  python experiments/probe_low_level.py --demos=data/play --relative_goals --window=10 [--in_sample]
  python experiments/probe_low_level.py --demos=data/play --window=30 --corrective_noise=0.05

Findings on our play data: BUILD_NOTES.md, "Why the low level fails closed loop" and "Corrective labels
lift the low level".
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
from rpl_jax import relabel, rollout, train
from rpl_jax.data import PaddedDemos, load_padded, read_metadata
from rpl_jax.data.play import demo_keys

_DEMOS = flags.DEFINE_string('demos', 'data/play', 'A dataset directory (experiments/generate_demos.py).')
_HELD_OUT = flags.DEFINE_integer('held_out', 24, 'The last demos, kept out of training and run closed loop.')
_WINDOW = flags.DEFINE_integer('window', 30, "W: the low level's relabeling window and the subgoal offset.")
_UPDATES = flags.DEFINE_integer('updates', 15000, 'Gradient updates, in calls of 100.')
_RELATIVE = flags.DEFINE_boolean('relative_goals', False, 'Goals as offsets from the state.')
_STEPS = flags.DEFINE_integer('episode_steps', 800, 'Closed-loop steps per held-out demo.')
_TRACK = flags.DEFINE_boolean(
    'track_progress', False, "Subgoal s_{j+W} from the demo state j nearest the current one (searched from the "
    "last j up to W ahead) instead of the step count: a high level that re-plans from where the arm is.")
_IN_SAMPLE = flags.DEFINE_boolean(
    'in_sample', False, 'Train on the held-out demos too: closed loop on training demos, which separates '
    'compounding error from generalisation.')
_CORRECTIVE = flags.DEFINE_float('corrective_noise', 0.0, 'train.BCConfig.corrective_noise (rad).')
_SUBGOAL_NOISE = flags.DEFINE_float('subgoal_noise', 0.0, 'train.BCConfig.subgoal_noise (rad).')
_SUBGOAL_FINGER_NOISE = flags.DEFINE_float('subgoal_finger_noise', 0.0, 'train.BCConfig.subgoal_finger_noise (m).')
_AVERAGE = flags.DEFINE_float('average_decay', 0.0, 'train.BCConfig.average_decay (per update).')
_SEED = flags.DEFINE_integer('seed', 0, 'Training seed.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')

DEVIATION_STEPS = (10, 20, 40, 80)
ARM = slice(0, tasks.ARM_DOF)


def dataset_env(meta: dict) -> KitchenEnv:
  """The env the dataset was recorded in (its metadata's env config)."""
  return KitchenEnv(KitchenConfig.from_dict(meta['config']['env']))


def held_out_plays(meta: dict, held_out: int) -> tuple[np.ndarray, list, np.ndarray]:
  """Seeds [K], element orders and goal states [K, 30] of the last `held_out` demos."""
  shards = meta['shards']
  if any(shard['seeds'] is None or shard['element_orders'] is None for shard in shards):
    raise app.UsageError('the dataset does not record per-demo seeds and element orders.')
  seeds = np.concatenate([shard['seeds'] for shard in shards])[-held_out:]
  orders = [order for shard in shards for order in shard['element_orders']][-held_out:]
  return seeds.astype(np.int32), orders, np.stack([tasks.goal_state(order) for order in orders]).astype(np.float32)


def train_low(demos: PaddedDemos):
  """(agent, BCState): the low level alone on Algorithm 2's tuples over W (GCBC with window W is
  exactly RIL's low level)."""
  window = _WINDOW.value
  config = train.BCConfig(method='gcbc', relabel=relabel.RelabelConfig(window, window, 1),
                          updates_per_step=100, relative_goals=_RELATIVE.value, corrective_noise=_CORRECTIVE.value,
                          subgoal_noise=_SUBGOAL_NOISE.value, subgoal_finger_noise=_SUBGOAL_FINGER_NOISE.value,
                          average_decay=_AVERAGE.value)
  agent = train.make_agent(config)
  data = train.training_data(config.method, demos)
  state = train.init_state(agent, config, data, jax.random.key(_SEED.value))
  step = train.jit_train_step(agent, config)
  for _ in range(max(1, _UPDATES.value // 100)):
    state, metrics = step(state, data)
  print(f"trained {int(state.updates)} updates, final nll {float(metrics['nll_low']):.3f}", flush=True)
  return agent, state


def episode(env, low, num_steps: int, replay: bool, params, normalizer, seed, goal, observations, actions, length):
  """One held-out demo closed loop toward its goal from its reset key: the low level's mean on the
  demo's s_{t+W} (or s_{j+W}, j its progress: --track_progress), or (replay) the demo's own actions."""
  window = _WINDOW.value

  def act(progress, obs, t, keys):
    if _TRACK.value:
      candidates = jnp.minimum(progress + jnp.arange(window + 1), length)
      progress = candidates[jnp.argmin(jnp.sum((observations[candidates] - obs) ** 2, axis=-1))]
    else:
      progress = t
    subgoal = observations[jnp.minimum(progress + window, length)]
    # Replayed demos hold still past their end (action 0), as rollout.open_loop_rollout does.
    replayed = jnp.where(t < length, actions[jnp.minimum(t, length - 1)], 0.0)
    action = replayed if replay else low.apply(params, normalizer, obs, subgoal)[0]
    return progress, action, subgoal

  return rollout.run_episode(env, act, jnp.int32(0), jax.random.key(0), goal, num_steps,
                             reset_key=demo_keys(seed)[0])


def main(argv):
  del argv
  if _HELD_OUT.value < 1:
    raise app.UsageError(f'--held_out must be >= 1, got {_HELD_OUT.value}.')
  meta = read_metadata(_DEMOS.value)
  demos = load_padded(_DEMOS.value)
  fit, held = (PaddedDemos(*(np.asarray(x)[sl] for x in demos))
               for sl in (slice(None, None if _IN_SAMPLE.value else -_HELD_OUT.value), slice(-_HELD_OUT.value, None)))
  if len(fit.lengths) < 1:
    raise app.UsageError(f'--held_out={_HELD_OUT.value} leaves no demo to train on.')
  seeds, orders, goals = held_out_plays(meta, _HELD_OUT.value)
  env = dataset_env(meta)
  start = time.perf_counter()
  agent, state = train_low(fit)
  train_seconds = time.perf_counter() - start
  params, normalizer = state.average['low'], state.normalizers['low']

  tuples = relabel.enumerate_low(held, _WINDOW.value)
  mean = agent.low.apply(params, normalizer, tuples.observations, tuples.goals)[0]
  action_error = float(jnp.mean(jnp.abs(mean - tuples.actions)[:, ARM]))

  inputs = (seeds, goals, held.observations, held.actions, held.lengths)
  run = lambda replay: jax.jit(jax.vmap(functools.partial(episode, env, agent.low, _STEPS.value, replay),
                                        in_axes=(None, None, 0, 0, 0, 0, 0)))(params, normalizer, *inputs)
  replayed, probed = run(True), run(False)
  steps = np.arange(_STEPS.value + 1)
  demo_states = np.take_along_axis(held.observations, np.minimum(steps, held.lengths[:, None])[..., None], axis=1)
  deviation = np.abs(np.asarray(probed.observations) - demo_states)[..., ARM].max(-1)
  results = {
      'demos': _DEMOS.value, 'train_demos': len(fit.lengths), 'held_out': _HELD_OUT.value,
      'in_sample': _IN_SAMPLE.value, 'window': _WINDOW.value,
      'updates': int(state.updates), 'relative_goals': _RELATIVE.value, 'track_progress': _TRACK.value,
      'seed': _SEED.value, 'corrective_noise': _CORRECTIVE.value,
      'subgoal_noise': _SUBGOAL_NOISE.value, 'subgoal_finger_noise': _SUBGOAL_FINGER_NOISE.value,
      'average_decay': _AVERAGE.value,
      'episode_steps': _STEPS.value, 'train_seconds': round(train_seconds, 1),
      'replayed_elements_per_episode': float(np.mean(replayed.step_completion[:, -1])),
      'elements_per_episode': float(np.mean(probed.step_completion[:, -1])),
      'success': float(np.mean(probed.success[:, -1])),
      'completed_per_element': dict(zip(tasks.ELEMENTS, np.asarray(probed.completed[:, -1]).sum(0).tolist())),
      'in_plan_per_element': {e: sum(e in tasks.parse_elements(order) for order in orders) for e in tasks.ELEMENTS},
      'median_arm_deviation': {str(t): float(np.median(deviation[:, t])) for t in DEVIATION_STEPS if t <= _STEPS.value},
      'held_out_arm_action_error': action_error,
      'backend': env.backend, 'jax': jax.__version__,
  }
  if results['replayed_elements_per_episode'] < 4:
    print('warning: the demos replayed in this harness do not complete all four elements; '
          'the dataset was recorded with a different env or code.', flush=True)
  print(json.dumps(results, indent=1))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
