"""The main job: play demos -> RIL -> per-goal RRF -> distillation -> evaluation -> report.md.

  python experiments/main.py --workdir=runs/quick                        # quick preset: a 2-core CPU, < 20 min
  python experiments/main.py --workdir=runs/paper --config.preset=paper   # paper scale, on an accelerator
  python experiments/main.py --workdir=runs/tuned --config.preset=tuned   # our best measured settings
  python experiments/main.py --workdir=runs/quick --config.rrf.variant=iril --config.rrf.iterations=30

The config is experiments/configs/main.py; `--config.x=...` overrides it and wins over the preset.
Running the same command again resumes: finished phases are restored from their checkpoints, an
interrupted one continues from its last checkpoint. Demos are generated into <workdir>/demos unless
--config.demos.path names a dataset. The run directory ends with report.md, results.json, the
learning curves (PNG), TensorBoard files, metrics_<phase>.jsonl, run_info.json and GIFs.
"""

import ctypes.util
import importlib.util
import json
import os
import subprocess
import sys

if not os.environ.get('DISPLAY') and ctypes.util.find_library('OSMesa'):
  os.environ.setdefault('MUJOCO_GL', 'osmesa')  # headless: software offscreen rendering for the videos

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # noqa: E402

from envs.kitchen import KitchenConfig, KitchenEnv, render, tasks  # noqa: E402
from rpl_jax import evaluation, nearest_neighbour, parallel, phases, rrf  # noqa: E402
from rpl_jax.checkpoint import CheckpointError  # noqa: E402
from rpl_jax.data import load_padded, read_element_steps  # noqa: E402
from rpl_jax.files import write_atomic  # noqa: E402
from rpl_jax.logs import quiet_info_logs, write_run_info  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', os.path.join(os.path.dirname(__file__), 'configs', 'main.py'),
                                          'The run config (experiments/configs/main.py).')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/quick', 'The run directory; rerun the same command to resume.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'Multi-host: host:port of process 0 '
                                   '(jax.distributed.initialize); empty: one process.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1, 'Multi-host: the number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, 'Multi-host: this process (0 writes the logs and report).')

IMITATION = {'ril': 'RIL', 'gcbc': 'GCBC', 'gcbc_final': 'BC', 'oracle': 'oracle-segmented IL'}  # report names of the imitation phase's methods
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_VIDEOS = ('None: `eval.videos` is 0. The job sets it to 0, with a warning in its log, where offscreen '
             'rendering is unavailable (README, "Play demonstrations").\n')


def command_line_overrides() -> dict:
  """The --config.* values given on the command line, by dotted path."""
  return config_flags.get_override_values(flags.FLAGS['config'])


def resolve_config():
  """The chosen preset (--config.preset, or the config file's argument) applied to the config file's
  defaults, then the command line's other --config.* overrides on top."""
  spec = importlib.util.spec_from_file_location('run_config', config_flags.get_config_filename(flags.FLAGS['config']))
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  config = config_module.get_config(_CONFIG.value.preset)  # not on top of the file's default preset
  for path, value in command_line_overrides().items():
    if path != 'preset':
      node = config
      *parents, leaf = path.split('.')
      for name in parents:
        node = node[name]
      node[leaf] = value
  return config


def demos_path(config, workdir: str) -> str:
  """The dataset directory, generated first (by process 0, the others waiting) when it has no
  complete dataset."""
  if config.demos.path:
    return config.demos.path
  path = os.path.join(workdir, 'demos')
  if parallel.is_writer() and not os.path.exists(os.path.join(path, 'summary.json')):
    resume = os.path.exists(os.path.join(path, 'metadata.json'))
    command = [sys.executable, os.path.join(REPO, 'experiments', 'generate_demos.py'), f'--out_dir={path}',
               f'--config.num_demos={config.demos.num_demos}', f'--config.batch_size={config.demos.batch_size}',
               f'--config.seed={config.seed}', f'--config.backend={config.backend}',
               f'--config.videos={config.demos.videos}']
    print('generating demos:', ' '.join(command + ['--resume'] * resume), flush=True)
    subprocess.run(command + ['--resume'] * resume, check=True, env=dict(os.environ, PYTHONPATH=REPO))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('demos generated')
  return path


def curve(workdir: str, phase: str, panels: list[str | tuple[str, ...]], title: str, path: str) -> str:
  """A PNG of metrics_<phase>.jsonl against the phase step: one panel per entry of `panels`, a metric
  name or a tuple of names drawn together (those the records hold)."""
  with open(os.path.join(workdir, f'metrics_{phase}.jsonl')) as f:
    records = [json.loads(line) for line in f]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
  for ax, panel in zip(np.atleast_1d(axes), panels):
    names = (panel,) if isinstance(panel, str) else panel
    for name in names[:1] + tuple(n for n in names[1:] if any(n in r for r in records)):
      ax.plot([r['step'] for r in records], [np.nan if r.get(name) is None else r[name] for r in records], label=name)
    if len(ax.lines) > 1:
      ax.legend(fontsize=7)
    ax.set_xlabel(f'{phase} step')
    ax.set_title(names[0], fontsize=9)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, path), dpi=110)
  plt.close(fig)
  return path


def goal_note(source: str, values: evaluation.GoalValues) -> str:
  """What the agents' goal states hold, for the report."""
  where = {'demos': 'where the demos leave it completed', 'task': "at FrankaKitchen's goal value"}[source]
  return (f'Goal states (`goal_values={source}`) hold each element {where}: '
          + '; '.join(f"{e} {', '.join(f'{v:.2f}' for v in values[e])}" for e in tasks.ELEMENTS)
          + '. Completion is judged against the goal values.')


def kept_note(kept: dict[str, dict]) -> str:
  """With rrf.keep_best, the report's line on which parameters each goal's RRF agent is."""
  if not kept:
    return ''
  return ('\nRRF agents (`rrf.keep_best`), per goal: the parameters after ' + '; '.join(
      f"{goal}: {k['updates']} updates (monitored success {100 * k['monitored_success']:.0f} %)"
      for goal, k in kept.items()) + '.\n')


def main(argv, config=None, workdir: str | None = None):
  """The whole job; `config` defaults to the command line's (resolve_config), `workdir` to --workdir."""
  del argv
  quiet_info_logs()
  try:
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = config or resolve_config()
    configs = phases.build(config)
    if config.ril.from_workdir:  # before the demos, which may have to be generated
      phases.check_source_ril(config.ril.from_workdir, phases.to_json(config))
  except (ValueError, KeyError, AttributeError, CheckpointError) as e:
    raise app.UsageError(f'invalid config: {e}') from e
  workdir = workdir or _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  env = KitchenEnv(KitchenConfig(backend=config.backend, horizon=max(config.rrf.episode_steps,
                                                                     config.eval.episode_steps)))
  if config.demos.videos or config.eval.videos:
    try:
      render.check_gl(env.model)
    except render.RenderError as e:
      logging.warning('videos are off: %s', e)
      config.demos.videos = config.eval.videos = 0
  run_config = phases.to_json(config)
  info = parallel.is_writer() and write_run_info(
      workdir, {'config': run_config, 'seed': config.seed, 'eval_seed': config.eval.seed})
  path = demos_path(config, workdir)
  demos = load_padded(path)
  boundaries = read_element_steps(path) if config.ril.method == 'oracle' else None  # that baseline alone
  print(f'{len(demos.lengths)} demos; {env.backend} backend on {jax.devices()}', flush=True)
  goal_values = phases.run_goal_values(workdir, configs.goal_values, demos)
  keep = dict(checkpoint_every=config.checkpoint_every, max_to_keep=config.max_to_keep)
  agent, ril_state = phases.ril(workdir, run_config, configs, demos, config.seed, config.ril.train_steps, **keep,
                                from_workdir=config.ril.from_workdir, boundaries=boundaries)
  tuned = phases.fine_tune(workdir, run_config, configs, env, agent, ril_state, demos, config.seed,
                           config.rrf.iterations, **keep, boundaries=boundaries, goal_values=goal_values)
  distilled = phases.distillation(workdir, run_config, configs, env, agent, ril_state, tuned, config.seed,
                                  config.max_to_keep, goal_values=goal_values)
  kept_scores = None if tuned.best is None else (tuned.best.iteration, tuned.best.success)  # rrf.keep_best
  ril_params, tuned_params, distilled, normalizers, kept_scores = parallel.fetch(
      (ril_state.average, rrf.tuned_params(tuned), distilled, ril_state.normalizers, kept_scores))
  if not parallel.is_writer():
    return  # process 0 evaluates (on its first device) and writes the report

  steps, episodes, key = config.eval.episode_steps, config.eval.episodes, jax.random.key(config.eval.seed)
  evaluate = evaluation.make_evaluator(env, agent, steps, values=goal_values)
  imitation, fine_tuned = IMITATION[config.ril.method], f'RRF per goal ({config.rrf.variant})'
  results = {
      imitation: evaluation.summarize(evaluate(ril_params, normalizers, key, configs.eval_goals, episodes)),
      fine_tuned: evaluation.summarize(evaluate(tuned_params, normalizers, key, configs.rrf_goals, episodes,
                                                per_goal=True)),
      'distilled': evaluation.summarize(evaluate(distilled, normalizers, key, configs.eval_goals, episodes)),
      'nearest neighbour': evaluation.summarize(
          nearest_neighbour.make_evaluator(env, steps, goal_values)(demos, key, configs.eval_goals, episodes)),
  }
  # Each lead compares episodes from the same resets: the imitation agent is run on the RRF goals too where
  # those are not its evaluation goals (a goal's resets follow from its place in the list).
  ril_on_rrf_goals = results[imitation] if configs.rrf_goals == configs.eval_goals else evaluation.summarize(
      evaluate(ril_params, normalizers, key, configs.rrf_goals, episodes))
  leads = {fine_tuned: evaluation.success_lead(results[fine_tuned], ril_on_rrf_goals),
           'distilled': evaluation.success_lead(results['distilled'], results[imitation])}
  gifs = [os.path.basename(path) for path in evaluation.write_videos(
      env, agent, distilled, normalizers, configs.eval_goals[:config.eval.videos], steps, True, workdir, 'distilled',
      goal_values)
  ] if config.eval.videos else []
  pngs = [] if config.ril.from_workdir else [
      curve(workdir, 'ril', ['nll_low', 'nll_high'][:len(agent.levels)],
            f'{imitation}: negative log-likelihood', 'ril_curve.png')]
  sampled_and_mean = lambda name: (name, f'deterministic/{name}')
  diagnostics = ['low/q_loss', 'low/mean_weight'] if config.rrf.variant == 'awopt' else [
      sampled_and_mean('low/reward'), 'low/kl']
  pngs.append(curve(workdir, 'rrf', [sampled_and_mean('success'), sampled_and_mean('step_completion'), *diagnostics],
                    f'RRF ({config.rrf.variant}), mean over {len(configs.rrf_goals)} goals', 'rrf_curve.png'))
  kept = {} if kept_scores is None else {  # which parameters became each goal's agent
      goal: {'updates': int(updates), 'monitored_success': float(success)}
      for goal, updates, success in zip(configs.rrf_goals, *kept_scores)}
  write_atomic(os.path.join(workdir, 'results.json'),
               lambda f: f.write(json.dumps({'config': run_config, 'goal_values': goal_values, 'results': results,
                                             'success_lead_over_imitation': leads, 'rrf_kept': kept},
                                            indent=1).encode()))
  goals = list(dict.fromkeys(configs.rrf_goals + configs.eval_goals))
  report = (f'# rpl_jax run: {workdir}\n\npreset `{config.preset}`, seed {config.seed} (evaluation seed '
            f'{config.eval.seed}), {env.backend} backend, {len(demos.lengths)} demos.\n\n'
            f'## Evaluation ({episodes} episodes per goal, {steps} steps, deterministic)\n\n'
            'Cells: success % / step completion. The RRF column covers its fine-tuned goals only; nearest '
            'neighbour replays the demo whose final state is closest to the goal, open loop. '
            'Paper, Table 1 (17 goals, human demos): RIL 21.7 % / 2.4.\n\n' + goal_note(configs.goal_values, goal_values) + '\n\n'
            + evaluation.markdown_table(results, goals) + kept_note(kept)
            + evaluation.leads_markdown(leads, imitation) +
            '\n## Learning curves\n\n' + ''.join(f'![{p}]({p})\n\n' for p in pngs) +
            '## Videos\n\n' + (''.join(f'- [{g}]({g})\n' for g in gifs) or NO_VIDEOS) +
            '\n## Files\n\nmetrics_<phase>.jsonl, tensorboard/ (`tensorboard --logdir ' + os.path.join(workdir, 'tensorboard')
            + '`), <phase>/checkpoints/, run_info.json (versions, devices), results.json.\n\n'
            '## Versions and devices\n\n' + ', '.join(f'{k} {v}' for k, v in info['packages'].items()) +
            f"; devices {info['devices']}; git {info['git']['commit']}\n\n"
            '## Config\n\n```json\n' + json.dumps(run_config, indent=1) + '\n```\n')
  write_atomic(os.path.join(workdir, 'report.md'), lambda f: f.write(report.encode()))
  print(evaluation.markdown_table(results, goals))
  print(f'wrote {os.path.join(workdir, "report.md")}')


if __name__ == '__main__':
  app.run(main)
