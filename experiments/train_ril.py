"""Relay imitation learning (RIL) against the two GCBC baselines on the same demos: the paper's Table 1.

Trains each method for each seed with the compiled BC step (rpl_jax/train.py), evaluates it on the
17 compound goals and writes, in --workdir: results.json (every run's summary), table.md and
table.csv (mean and spread over seeds, successes pooled over episodes with a Fisher test of RIL's
lead, beside the paper's numbers), success.png (bar plots of success and step completion) and, with
--config.videos, GIFs of RIL episodes.

Each run (one method, one seed) is a resumable phase named <method>_seed<k> (rpl_jax/phases.py):
orbax checkpoints of its training state in <method>_seed<k>/checkpoints/ (every
--config.checkpoint_every calls and at the end), its training curve in metrics_<method>_seed<k>.jsonl
and tensorboard/<method>_seed<k>/, and its evaluation in <method>_seed<k>/summary.json. Rerunning an
interrupted command resumes each run from its last checkpoint (bit for bit on a CPU) and evaluates
only the runs without a summary; a run made with other settings is refused, never mixed in. The
config is experiments/configs/train_ril.py; override any key with --config.<key>=...

  python experiments/train_ril.py --config.demos=data/play --workdir=/tmp/ril
  python experiments/train_ril.py --config.demos=data/play --config.methods=ril --config.seeds=1 \
      --config.train_steps=10 --config.eval_episodes=2

The demos come from experiments/generate_demos.py (or any rpl_jax demo dataset). Rendering videos
needs MUJOCO_GL=osmesa or egl on a headless host.
"""

import csv
import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import jax
import matplotlib
import numpy as np

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # noqa: E402

from envs.kitchen import KitchenConfig, KitchenEnv, render  # noqa: E402
from rpl_jax import evaluation, logs, networks, phases, relabel, train  # noqa: E402
from rpl_jax.checkpoint import CheckpointError, read_config  # noqa: E402
from rpl_jax.data import load_padded  # noqa: E402
from rpl_jax.files import write_atomic  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', os.path.join(os.path.dirname(__file__), 'configs', 'train_ril.py'),
                                          'The experiment config (experiments/configs/train_ril.py).')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/rpl_ril', 'Where results, tables, plots and videos go.')

def _goals() -> list[str]:
  return [g.strip() for g in _CONFIG.value.goals.split(',') if g.strip()]


def _methods() -> list[str]:
  return [m.strip() for m in _CONFIG.value.methods.split(',') if m.strip()]


# Gupta et al. 2019, Table 1 (17 goals, human demos): success %, average step completion.
PAPER = {'ril': (21.7, 2.4), 'gcbc': (8.8, 2.2), 'gcbc_final': (7.6, 1.78)}
LABELS = {'ril': 'RIL', 'gcbc': 'GCBC with relabeling', 'gcbc_final': 'GCBC without relabeling'}


def _config(method: str) -> train.BCConfig:
  return train.BCConfig(
      method=method,
      relabel=relabel.RelabelConfig(_CONFIG.value.window_low, _CONFIG.value.window_high, _CONFIG.value.horizon),
      policy=networks.PolicyConfig(hidden=tuple(_CONFIG.value.hidden)),
      batch_size=_CONFIG.value.batch_size, updates_per_step=_CONFIG.value.updates_per_step,
      learning_rate=_CONFIG.value.learning_rate, relative_goals=_CONFIG.value.relative_goals,
      relative_subgoals=_CONFIG.value.relative_subgoals and method in train.HIERARCHICAL,  # baselines: no high level
      object_goals=_CONFIG.value.object_goals,
      corrective_noise=_CONFIG.value.corrective_noise, subgoal_noise=_CONFIG.value.subgoal_noise,
      subgoal_finger_noise=_CONFIG.value.subgoal_finger_noise, average_decay=_CONFIG.value.average_decay)


# Config keys that choose which runs to make, how often to save or what to render, not what a run's numbers are.
NOT_RUN_SETTINGS = ('methods', 'seeds', 'videos', 'checkpoint_every')
# Run settings added after runs were first saved: a run saved without one ran as this value.
ADDED_SETTINGS = {'object_goals': False}
MAX_TO_KEEP = 2  # checkpoints per run


def _run_settings() -> dict:
  """The config keys that a run's numbers depend on: its checkpoints' run config."""
  settings = json.loads(_CONFIG.value.to_json())
  return {key: value for key, value in settings.items() if key not in NOT_RUN_SETTINGS}


def _run_name(method: str, seed: int) -> str:
  return f'{method}_seed{seed}'


def _summary_path(name: str) -> str:
  return os.path.join(_WORKDIR.value, name, 'summary.json')


def _check_earlier_run(name: str) -> None:
  """Raise ValueError, naming what differs, if an earlier command started run `name` with other settings
  or left something there this script cannot read."""
  checkpoints = os.path.join(_WORKDIR.value, name, 'checkpoints')
  if not os.path.exists(checkpoints):
    if os.path.exists(_summary_path(name)):
      raise ValueError(f'{_summary_path(name)} has no checkpoints beside it: remove {name} to rerun.')
    return
  try:
    saved = read_config(checkpoints)
    if os.path.exists(_summary_path(name)):
      with open(_summary_path(name)) as f:
        json.load(f)['success']
  except (CheckpointError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{os.path.join(_WORKDIR.value, name)} is not a run of this script ({e}): remove it to '
                     'rerun.') from e
  saved = {**ADDED_SETTINGS, **saved}
  differ = [f'{key}={saved.get(key)!r} there, {value!r} here' for key, value in _run_settings().items()
            if saved.get(key) != value]
  if differ:
    raise ValueError(f'{os.path.join(_WORKDIR.value, name)} was run with other settings ({"; ".join(differ)}): use '
                     'another --workdir, or remove it to rerun.')


def _train_seconds(name: str) -> float:
  """The run's training time over every command that trained it (its logged perf/seconds)."""
  with open(os.path.join(_WORKDIR.value, f'metrics_{name}.jsonl')) as f:
    return sum(json.loads(line)['perf/seconds'] for line in f)


def _trainer(env, demos, device_demos, config: train.BCConfig, goal_values):
  """`run(seed) -> (summary, agent, state)` for one method: the agent, the compiled step and the
  evaluator are built once, so further seeds reuse their compilations. A run resumes from its last
  checkpoint, and one evaluated by an earlier command is read back."""
  agent = train.make_agent(config)
  step = train.jit_train_step(agent, config)
  evaluate = evaluation.make_evaluator(env, agent, _CONFIG.value.episode_steps,
                                       deterministic=not _CONFIG.value.stochastic, values=goal_values)

  def run(seed: int):
    name = _run_name(config.method, seed)
    initial = train.init_state(agent, config, demos, jax.random.key(seed))
    state = phases.run_phase(_WORKDIR.value, name, _run_settings(), initial, lambda s: step(s, device_demos),
                             _CONFIG.value.train_steps, _CONFIG.value.checkpoint_every, MAX_TO_KEEP,
                             lambda m: {k: float(v) for k, v in m.items()})
    if os.path.exists(_summary_path(name)):
      print(f'{config.method} seed {seed}: evaluated by an earlier run ({_summary_path(name)})')
      with open(_summary_path(name)) as f:
        return json.load(f), agent, state
    start = time.perf_counter()
    reset_key = jax.random.key(phases.TABLE_EVAL_SEED + seed)
    result = evaluation.summarize(evaluate(state.average, state.normalizers, reset_key, _goals(),
                                           _CONFIG.value.eval_episodes))
    result.update(train_seconds=_train_seconds(name), eval_seconds=time.perf_counter() - start)
    record = json.dumps(result).encode()
    write_atomic(_summary_path(name), lambda f: f.write(record))
    return result, agent, state

  return run


def _table(results: dict) -> list[dict]:
  """Per method: mean and std over seeds, the successes pooled over seeds' episodes and, beside each
  baseline, the one-sided Fisher p-value that RIL succeeds more often (evaluation.success_lead_p_value)."""
  counts = {method: (sum(evaluation.success_count(r) for r in runs), sum(r['episodes'] for r in runs))
            for method, runs in results.items()}
  rows = []
  for method, runs in results.items():
    success = np.array([r['success'] for r in runs]) * 100
    completion = np.array([r['step_completion'] for r in runs])
    paper = PAPER[method]
    p_value = (f"{evaluation.success_lead_p_value(*counts['ril'], *counts[method]):.3g}"
               if method != 'ril' and 'ril' in counts else '-')
    rows.append({'method': LABELS[method], 'seeds': len(runs),
                 'success_%': f'{success.mean():.1f} ± {success.std():.1f}',
                 'successes': f'{counts[method][0]} / {counts[method][1]}', 'p_ril_succeeds_more': p_value,
                 'step_completion': f'{completion.mean():.2f} ± {completion.std():.2f}',
                 'paper_success_%': paper[0], 'paper_step_completion': paper[1]})
  return rows


def _write_tables(rows: list[dict], workdir: str) -> None:
  with open(os.path.join(workdir, 'table.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  header = '| ' + ' | '.join(rows[0]) + ' |\n|' + '---|' * len(rows[0]) + '\n'
  body = ''.join('| ' + ' | '.join(str(v) for v in row.values()) + ' |\n' for row in rows)
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write(header + body)
  print('\n' + header + body)


def _plot(results: dict, path: str) -> None:
  """Success and step completion per method, ours (mean and std over seeds) beside the paper's."""
  methods = list(results)
  x = np.arange(len(methods))
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for ax, (key, scale, paper_index, label) in zip(axes, [('success', 100, 0, 'success (%)'),
                                                           ('step_completion', 1, 1, 'step completion (0-4)')]):
    values = [scale * np.array([r[key] for r in results[m]]) for m in methods]
    ax.bar(x - 0.2, [v.mean() for v in values], 0.4, yerr=[v.std() for v in values], label='ours (scripted play)')
    ax.bar(x + 0.2, [PAPER[m][paper_index] for m in methods], 0.4, label='paper (human demos)')
    ax.set_xticks(x, [LABELS[m] for m in methods], fontsize=7)
    ax.set_ylabel(label)
  axes[0].legend(fontsize=8)
  fig.suptitle('17 compound goals')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _videos(env, agent, state, workdir: str, goal_values) -> None:
  render.check_gl(env.model)
  for path in evaluation.write_videos(env, agent, state.average, state.normalizers, _goals()[:_CONFIG.value.videos],
                                      _CONFIG.value.episode_steps, not _CONFIG.value.stochastic, workdir, 'ril',
                                      goal_values):
    print(f'video: {path}')


def main(argv):
  del argv
  logs.quiet_info_logs()
  unknown = set(_methods()) - set(PAPER)
  if unknown:
    raise app.UsageError(f'methods {sorted(unknown)} are not in Table 1; choose from {tuple(PAPER)} '
                         '(experiments/compare.py runs the other baselines, e.g. oracle segmentation).')
  if (not _methods() or _CONFIG.value.seeds < 1 or _CONFIG.value.train_steps < 1
      or _CONFIG.value.checkpoint_every < 1 or _CONFIG.value.videos < 0):
    raise app.UsageError('--config.methods must name a method, --config.seeds, --config.train_steps and '
                         '--config.checkpoint_every must be >= 1, and --config.videos >= 0.')
  if _CONFIG.value.goal_values not in evaluation.GOAL_SOURCES:
    raise app.UsageError(f'--config.goal_values must be one of {evaluation.GOAL_SOURCES}, '
                         f'got {_CONFIG.value.goal_values!r}.')
  configs = {method: _config(method) for method in _methods()}  # bad windows or sizes fail here
  evaluation.check_goals(_goals(), _CONFIG.value.eval_episodes)
  try:
    for method in configs:
      for seed in range(_CONFIG.value.seeds):
        _check_earlier_run(_run_name(method, seed))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  demos = load_padded(_CONFIG.value.demos)
  relabel.check_windows(configs[_methods()[0]].relabel, demos.lengths)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  env = KitchenEnv(KitchenConfig(backend=_CONFIG.value.backend, horizon=_CONFIG.value.episode_steps))
  print(f'{len(demos.lengths)} demos ({int(demos.lengths.sum())} steps) from {_CONFIG.value.demos}; {env.backend} backend')

  goal_values = evaluation.goal_values(_CONFIG.value.goal_values, demos)
  print(f'goal states ({_CONFIG.value.goal_values}): {goal_values}')
  device_demos = train.device_demos(demos)
  results = {}
  for method, config in configs.items():
    results[method] = []
    run = _trainer(env, demos, device_demos, config, goal_values)
    for seed in range(_CONFIG.value.seeds):
      summary, agent, state = run(seed)
      if method == 'ril' and seed == 0 and _CONFIG.value.videos:
        _videos(env, agent, state, _WORKDIR.value, goal_values)
      print(f'{method} seed {seed}: success {summary["success"]:.1%}, step completion '
            f'{summary["step_completion"]:.2f} (train {summary["train_seconds"]:.0f} s, '
            f'eval {summary["eval_seconds"]:.0f} s)', flush=True)
      results[method].append(summary)

  everything = {'config': json.loads(_CONFIG.value.to_json()),
                'configs': {m: dataclasses.asdict(c) for m, c in configs.items()},
                'goal_values': goal_values, 'results': results}
  write_atomic(os.path.join(_WORKDIR.value, 'results.json'),
               lambda f: f.write(json.dumps(everything, indent=1).encode()))
  _write_tables(_table(results), _WORKDIR.value)
  _plot(results, os.path.join(_WORKDIR.value, 'success.png'))
  print(f'wrote {_WORKDIR.value}/results.json, table.md, table.csv, success.png')


if __name__ == '__main__':
  app.run(main)
