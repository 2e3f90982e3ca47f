"""The ensemble of a train_ril.py table's seeds, distilled into one agent by DAgger (rpl_jax.distill.dagger),
written as a run directory that train_rpl.py fine-tunes with RRF and evaluate.py evaluates.

  python experiments/distill_ensemble.py --table=/tmp/ril --out=runs/ril_student
  python experiments/evaluate.py --workdir=runs/ril_student --agents=ril
  python experiments/train_rpl.py --ril_workdir=runs/ril_student --workdir=runs/dapg_student \
      --config.preset=tuned --config.rrf.variant=dapg

The teacher is the table's runs of --method (default: every seed) acting as one agent (rollout.ensemble:
at each level, the mean of their means). The student starts from the run of --start_seed. Its first fit
is on the teacher's own mean-action episodes toward the table's goals; each of --rounds then adds as many
of the student's own episodes, labelled by the teacher, and fits again. The teacher, the starting run and
the student after every fit are evaluated on the same resets (--eval_episodes per goal from reset key
--eval_seed, the table's episode length) into <out>/distill_ensemble.{json,md}.

<out>/ril/checkpoints holds the student: the starting run's training state with the student's parameters
as the ones it acts with, saved under a main-job config whose ril.* settings and demos are the table's
(phases.ril_settings). An --out that is not empty is refused. The student learns from
episodes toward the evaluation goals, as RRF does, so it is no Table 1 entry: it is not imitation alone.
"""

import importlib.util
import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from envs.kitchen import KitchenConfig, KitchenEnv
from rpl_jax import distill, evaluation, logs, phases, train
from rpl_jax.checkpoint import Checkpointer, CheckpointError
from rpl_jax.data import read_metadata
from rpl_jax.files import write_atomic

_TABLE = flags.DEFINE_string('table', None, 'An experiments/train_ril.py workdir.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The run directory to write the student to.', required=True)
_METHOD = flags.DEFINE_string('method', 'ril', "The table's method whose runs form the teacher.")
_SEEDS = flags.DEFINE_list('seeds', [], 'The seeds of the teacher\'s runs (two or more); default: all of them.')
_START_SEED = flags.DEFINE_integer('start_seed', None, 'The run the student starts from; default: the first seed.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'DAgger rounds after the fit on the teacher\'s episodes.')
_EPISODES = flags.DEFINE_integer('episodes', 8, 'Mean-action episodes per goal collected in each round.')
_UPDATES = flags.DEFINE_integer('updates', 5000, 'Adam updates per fit.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Samples per level and update.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-3, 'Adam\'s learning rate at the start of each fit.')
_DECAY = flags.DEFINE_boolean('decay', True, 'Decay the learning rate to 0 along a cosine over each fit.')
_SEED = flags.DEFINE_integer('seed', 0, 'Key of the collected episodes and the fits.')
_EVAL_EPISODES = flags.DEFINE_integer('eval_episodes', 10, 'Evaluation episodes per goal for every agent.')
_EVAL_SEED = flags.DEFINE_integer('eval_seed', phases.TABLE_EVAL_SEED, 'Reset key of the evaluation.')
_BACKEND = flags.DEFINE_string('backend', None, "Env backend; default: the table's.")

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'main.py')


def main_config():
  """The main job's default config (experiments/configs/main.py), without main.py's flags."""
  spec = importlib.util.spec_from_file_location('main_config', CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_config(table: dict, bc, demos: str, start_seed: int, backend: str, settings: dict) -> dict:
  """The main-job config the student's run directory is saved under: the table's imitation settings,
  demos, goals, goal values and episode length; `settings` (this script's flags) under 'distill_ensemble'."""
  config = main_config()
  config.seed = start_seed
  config.backend = backend
  config.goal_values = table['config']['goal_values']
  config.demos.path = demos
  config.ril.update(phases.ril_settings(bc, table['config']['train_steps']))
  config.eval.goals = table['config']['goals']
  config.eval.seed = _EVAL_SEED.value
  config.eval.episodes = _EVAL_EPISODES.value
  config.eval.episode_steps = table['config']['episode_steps']
  record = phases.to_json(config)
  record['distill_ensemble'] = settings
  return record


def report(settings: dict, results: dict[str, dict], history: list[dict], goals) -> str:
  start = f'{settings["method"]}_seed{settings["start_seed"]}'
  lines = [f'# The {settings["method"]} ensemble of {settings["table"]}, distilled by DAgger', '',
           f'Teacher: seeds {settings["seeds"]}. The student starts from {start}. Fits: {settings["updates"]} Adam '
           f'updates of {settings["batch_size"]} at {settings["learning_rate"]:g}'
           f'{", decayed along a cosine" if settings["decay"] else ""}, after the teacher\'s episodes ('
           f'{settings["episodes"]} per goal) and after each of {settings["rounds"]} rounds of the student\'s own.', '',
           '| fit | episodes added | samples | their success | their step completion | nll low | nll high |',
           '|---|---|---|---|---|---|---|']
  for r, h in enumerate(history):
    lines.append(f'| {r} | {h["episodes_of"]}\'s | {h["samples"]} | {h["success"]:.3f} | {h["step_completion"]:.2f} '
                 f'| {h["nll_low"]:.2f} | {h.get("nll_high", float("nan")):.2f} |')
  lines += ['', f'## Evaluation: {settings["eval_episodes"]} mean-action episodes per goal from reset key '
            f'{settings["eval_seed"]}, the same resets for every agent', '']
  leads = {name: evaluation.success_lead(results[name], results[start]) for name in results if name != start}
  return '\n'.join(lines) + '\n' + evaluation.markdown_table(results, goals) + evaluation.leads_markdown(leads, start)


def main(argv):
  del argv
  logs.quiet_info_logs()
  checkpoints = os.path.join(_OUT.value, 'ril', 'checkpoints')
  if os.path.exists(_OUT.value) and os.listdir(_OUT.value):  # a student, or another run whose files it would replace
    raise app.UsageError(f'{_OUT.value} already exists and is not empty: name a new directory for the student.')
  if _ROUNDS.value < 0:
    raise app.UsageError(f'--rounds must be >= 0, got {_ROUNDS.value}.')
  try:
    table = phases.read_table(_TABLE.value)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f'--table: {e}') from e
  ran = len(table['results'].get(_METHOD.value, []))
  if not ran:
    raise app.UsageError(f'--method: {_TABLE.value} has no {_METHOD.value!r} runs; it has {sorted(table["results"])}.')
  seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else list(range(ran))
  if len(set(seeds)) < 2 or any(not 0 <= s < ran for s in seeds):
    raise app.UsageError(f'--seeds must name two or more distinct runs of {_METHOD.value!r} in {_TABLE.value} (seeds '
                         f'0-{ran - 1}), got {seeds}.')
  start_seed = seeds[0] if _START_SEED.value is None else _START_SEED.value
  if start_seed not in seeds:
    raise app.UsageError(f'--start_seed must be one of --seeds {seeds}, got {start_seed}.')
  demos = os.path.abspath(table['config']['demos'])  # a relative path is the table's, read from here
  try:
    read_metadata(demos)  # the student's run directory names them for train_rpl.py's RRF
    config = distill.DistillConfig(_EPISODES.value, _UPDATES.value, _BATCH_SIZE.value, _LEARNING_RATE.value,
                                   _DECAY.value)
    goals = evaluation.check_goals(phases.goal_list(table['config']['goals']), _EVAL_EPISODES.value)
    backend = _BACKEND.value or table['config']['backend']
    phases.check_backend(backend)
    start_state, bc = phases.load_table_state(_TABLE.value, _METHOD.value, start_seed)
    teacher = phases.ensemble([phases.load_table_run(_TABLE.value, _METHOD.value, seed)[0] for seed in seeds])
  except (ValueError, CheckpointError) as e:
    raise app.UsageError(str(e)) from e
  agent, normalizers = train.make_agent(bc), start_state.normalizers  # every seed's: phases.ensemble checks
  goal_values = {element: tuple(v) for element, v in table['goal_values'].items()}
  goal_states = jnp.asarray(evaluation.goal_states(goals, goal_values))
  steps = table['config']['episode_steps']
  env = KitchenEnv(KitchenConfig(backend=backend, horizon=steps))

  start = time.perf_counter()
  fitted, history = distill.dagger(env, teacher.agent, teacher.params, agent, start_state.average, normalizers,
                                   goal_states, jax.random.key(_SEED.value), config, _ROUNDS.value, steps)
  for r, h in enumerate(history):
    print(f'fit {r}: {h["samples"]} samples ({h["episodes_of"]}\'s episodes added: success {h["success"]:.3f}, step '
          f'completion {h["step_completion"]:.2f}), nll low {h["nll_low"]:.2f}', flush=True)
  print(f'distilled in {time.perf_counter() - start:.0f} s', flush=True)

  settings = {'table': os.path.abspath(_TABLE.value), 'method': _METHOD.value, 'seeds': seeds,
              'start_seed': start_seed, 'rounds': _ROUNDS.value, 'episodes': _EPISODES.value,
              'updates': _UPDATES.value, 'batch_size': _BATCH_SIZE.value, 'learning_rate': _LEARNING_RATE.value,
              'decay': _DECAY.value, 'seed': _SEED.value, 'eval_episodes': _EVAL_EPISODES.value,
              'eval_seed': _EVAL_SEED.value, 'backend': backend}
  student = start_state.replace(params=fitted[-1], average=fitted[-1])
  os.makedirs(_OUT.value, exist_ok=True)
  phases.write_goal_values(_OUT.value, table['config']['goal_values'], goal_values)
  with Checkpointer(checkpoints, run_config(table, bc, demos, start_seed, backend, settings), max_to_keep=1) as saver:
    saver.save(table['config']['train_steps'], student, force=True)

  evaluate = {structure: evaluation.make_evaluator(env, structure, steps, values=goal_values)
              for structure in (agent, teacher.agent)}
  agents = {f'{_METHOD.value}_seed{start_seed}': (agent, start_state.average),
            f'{_METHOD.value}_ensemble': (teacher.agent, teacher.params),
            **{f'student_fit{r}': (agent, params) for r, params in enumerate(fitted)}}
  results = {}
  for name, (structure, params) in agents.items():
    results[name] = evaluation.summarize(evaluate[structure](params, normalizers, jax.random.key(_EVAL_SEED.value),
                                                             goals, _EVAL_EPISODES.value))
    print(f'{name}: {evaluation.success_count(results[name])} successes of {results[name]["episodes"]}, step '
          f'completion {results[name]["step_completion"]:.2f}', flush=True)
  out = os.path.join(_OUT.value, 'distill_ensemble')
  write_atomic(out + '.json', lambda f: f.write(json.dumps(
      {'settings': settings, 'history': history, 'goals': goals, 'results': results}, indent=1).encode()))
  write_atomic(out + '.md', lambda f: f.write(report(settings, results, history, goals).encode()))
  print(f'wrote {checkpoints} (the student: student_fit{len(fitted) - 1}), {out}.json and {out}.md')


if __name__ == '__main__':
  app.run(main)
