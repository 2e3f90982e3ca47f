"""Which elements does a trained agent fail, and at which level? Each element of a demo, in isolation.

For every demo of --demos (best held out: demos the run did not train on) and every position j of its
four-element plan, the demo's own actions are replayed from its own reset key up to the step its
element j-1 completed (t0; 0 for the first), so the kitchen is exactly where the demo left it. Then the
agent of an experiments/train_ril.py run (--run, --method, --seed; its weight average, mean actions)
acts for --budget steps toward the demo's compound goal (the run's goal values), its high level
deciding every H steps from t0. Did it complete element j?

--subgoals=demo replaces the high level by the demo's own future state s_{min(t+W_l, T)} (a perfect,
clock-synchronized high level), so the low level alone is probed: an element the low level does with
the demo's subgoals but not the agent's own is the high level's failure. The replayed prefix must
complete exactly the demo's first j elements ('prefix_exact', printed and asserted by the test).

Prints and writes JSON (--out, default <run>/probe_<method>_seed<k>[_demo_subgoals].json): the
fraction of elements done per element and per plan position, with each row's steps taken against
the demo's, and the arm's largest joint distance from the reset posture at t0 and 60 steps later.

  python experiments/probe_elements.py --run=/tmp/ril --demos=data/held_out [--subgoals=demo]

Findings: BUILD_NOTES.md, "train_ril runs resume mid-training; what limits the tuned recipe" and
"Object goals".
"""

import functools
import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from envs.kitchen import KitchenConfig, KitchenEnv, tasks
from rpl_jax import logs, phases, rollout
from rpl_jax.checkpoint import CheckpointError
from rpl_jax.data import load_padded, read_element_steps, read_metadata
from rpl_jax.data.play import demo_keys
from rpl_jax.files import write_atomic

_RUN = flags.DEFINE_string('run', None, 'An experiments/train_ril.py workdir.', required=True)
_METHOD = flags.DEFINE_string('method', 'ril', "The run's method: ril, gcbc or gcbc_final.")
_SEED = flags.DEFINE_integer('seed', 0, "The run's seed.")
_DEMOS = flags.DEFINE_string('demos', None, 'A dataset directory (experiments/generate_demos.py).', required=True)
_FIRST = flags.DEFINE_integer('first', 0, 'The first demo to probe.')
_COUNT = flags.DEFINE_integer('count', 48, 'Demos to probe (each gives 4 rows).')
_BUDGET = flags.DEFINE_integer('budget', 300, 'Steps the agent gets for each element.')
_SUBGOALS = flags.DEFINE_enum('subgoals', 'agent', ['agent', 'demo'],
                              "agent: the run's own high level; demo: the demo's s_{t+W_l} (a perfect high level).")
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')

ARM = slice(0, tasks.ARM_DOF)
# Steps after t0 (those within the budget) at which the arm's distance from the reset posture is recorded.
ARM_STEPS = (0, 60)


def episode(env, agent, params, normalizers, window: int, demo_subgoals: bool, num_steps: int, t0, seed, goal,
            observations, actions, length):
  """The demo's actions until t0, then the agent's mean toward `goal`."""
  low, high = agent.policies(params, normalizers, deterministic=True)

  def act(subgoal, obs, t, keys):
    if demo_subgoals:
      subgoal = observations[jnp.minimum(t + window, length)]
    elif high is not None:
      decide = (t >= t0) & ((t - t0) % agent.horizon == 0)
      subgoal = jax.lax.cond(decide, lambda: high(obs, goal, keys[0]), lambda: subgoal)
    action = jnp.where(t < t0, actions[jnp.minimum(t, actions.shape[0] - 1)], low(obs, subgoal, keys[1]))
    return subgoal, action, subgoal

  return rollout.run_episode(env, act, goal, jax.random.key(0), goal, num_steps, reset_key=demo_keys(seed)[0])


def plays(path: str, first: int, count: int):
  """(seeds [N], element orders, element steps [N, 4]) of demos first..first+count-1 of a dataset."""
  meta = read_metadata(path)
  if any(shard['seeds'] is None or shard['element_orders'] is None for shard in meta['shards']):
    raise app.UsageError(f'{path} does not record per-demo seeds and element orders.')
  seeds = np.concatenate([shard['seeds'] for shard in meta['shards']])
  if not (first >= 0 and count >= 1 and first + count <= len(seeds)):
    raise app.UsageError(f'--first={first} --count={count} is outside the {len(seeds)} demos of {path}.')
  orders = [order for shard in meta['shards'] for order in shard['element_orders']]
  picked = slice(first, first + count)
  return seeds[picked].astype(np.int32), orders[picked], read_element_steps(path)[picked], meta


def summarize(rows: list[dict], key: str) -> dict[str, dict]:
  groups = {}
  for row in rows:
    groups.setdefault(str(row[key]), []).append(row)
  return {name: {'n': len(group), 'done': float(np.mean([r['done'] for r in group])),
                 'median_arm_from_reset': {k: float(np.median([r['arm_from_reset'][k] for r in group]))
                                           for k in group[0]['arm_from_reset']}}
          for name, group in groups.items()}


def main(argv):
  del argv
  logs.quiet_info_logs()
  if _BUDGET.value < 1:
    raise app.UsageError(f'--budget must be >= 1, got {_BUDGET.value}.')
  seeds, orders, element_steps, meta = plays(_DEMOS.value, _FIRST.value, _COUNT.value)
  try:
    policy, config = phases.load_table_run(_RUN.value, _METHOD.value, _SEED.value)
  except (FileNotFoundError, ValueError, CheckpointError) as e:
    raise app.UsageError(str(e)) from e
  demos = load_padded(_DEMOS.value)
  picked = slice(_FIRST.value, _FIRST.value + _COUNT.value)
  observations, actions, lengths = (np.asarray(x)[picked] for x in demos)

  # One row per (demo, plan position): the episode starts at t0, when the demo completed its previous element.
  demo_index = np.repeat(np.arange(len(seeds)), 4)
  position = np.tile(np.arange(4), len(seeds))
  t0 = np.where(position == 0, 0, element_steps[demo_index, np.maximum(position - 1, 0)]).astype(np.int32)
  num_steps = int(t0.max()) + _BUDGET.value
  env = KitchenEnv(KitchenConfig.from_dict(meta['config']['env'], horizon=num_steps + 1))
  goals = np.stack([tasks.goal_state(orders[d], values=policy.goal_values) for d in demo_index]).astype(np.float32)
  run = jax.jit(jax.vmap(functools.partial(episode, env, policy.agent, policy.params, policy.normalizers,
                                           config.relabel.window_low,
                                           _SUBGOALS.value == 'demo', num_steps)))
  trajectory = run(t0, seeds[demo_index], goals, observations[demo_index], actions[demo_index], lengths[demo_index])
  completed = np.asarray(trajectory.completed)  # [R, T + 1, 7]
  arm = np.asarray(trajectory.observations)[..., ARM]

  rows = []
  for r, (d, j, start) in enumerate(zip(demo_index, position, t0)):
    element = tasks.parse_elements(orders[d])[j]
    done_at = np.nonzero(completed[r, start:start + _BUDGET.value + 1, tasks.ELEMENTS.index(element)])[0]
    rows.append({'demo': _FIRST.value + int(d), 'position': int(j), 'element': element, 't0': int(start),
                 'prefix_exact': bool(completed[r, start].sum() == j), 'done': bool(len(done_at)),
                 'steps': int(done_at[0]) if len(done_at) else None, 'demo_steps': int(element_steps[d, j] - start),
                 'arm_from_reset': {str(k): float(np.abs(arm[r, start + k] - tasks.INIT_QPOS[ARM]).max())
                                    for k in ARM_STEPS if k <= _BUDGET.value}})
  results = {'run': _RUN.value, 'method': _METHOD.value, 'seed': _SEED.value, 'demos': _DEMOS.value,
             'first': _FIRST.value, 'count': _COUNT.value, 'budget': _BUDGET.value, 'subgoals': _SUBGOALS.value,
             'backend': env.backend, 'prefix_exact': float(np.mean([r['prefix_exact'] for r in rows])),
             'done': float(np.mean([r['done'] for r in rows])),
             'by_element': summarize(rows, 'element'), 'by_position': summarize(rows, 'position')}
  print(json.dumps(results, indent=1))
  suffix = '_demo_subgoals' if _SUBGOALS.value == 'demo' else ''
  out = _OUT.value or os.path.join(_RUN.value, f'probe_{_METHOD.value}_seed{_SEED.value}{suffix}.json')
  write_atomic(out, lambda f: f.write(json.dumps({**results, 'rows': rows}, indent=1).encode()))
  if results['prefix_exact'] < 1:
    print('warning: some replayed prefixes do not complete exactly the demo\'s first elements; the dataset was '
          'recorded with a different env or code.', flush=True)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
