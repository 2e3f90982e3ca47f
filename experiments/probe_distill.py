"""Does distillation keep the per-goal agents' gain? One student for all goals against one per goal.

For a main-job or train_rpl.py run with RRF and distillation phases, this redoes the run's
distillation: the kept per-goal agents' rollouts, collected as the run collected them (its distill
config, seed and keys), fitted from RIL's parameters (a) into one student for every goal, as the
run did (`max_abs_difference_from_run` says how far that student is from the run's own distilled
agent: 0 up to float rounding), and (b) into one student per goal, each on its own teacher's samples
alone (distill.per_goal_students), with the same updates each. --repeats=N does both N times, the
first with the run's keys, the others with other collect and fit keys: a distilled agent's success
turns on those keys by as much as the per-goal agents' lead (BUILD_NOTES.md), so one repeat says
little. RIL, the per-goal agents and every student run on the same resets (evaluation.make_evaluator,
per goal).

Writes --out.json and .md (default <workdir>/evaluation/probe_distill_<backend>_seed<seed>_<episodes>x
<steps>_repeats<N>): per agent the success, step completion and per-goal table, each one's success
lead over RIL, and each kind's episodes pooled over the repeats against RIL's.

  python experiments/probe_distill.py --workdir=runs/tuned --episodes=30 --repeats=3

Findings: BUILD_NOTES.md, "Distillation: one student, one per goal, DAgger and a goal-aware low level".
"""

import functools
import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_dict

from envs.kitchen import KitchenConfig, KitchenEnv
from rpl_jax import distill, evaluation, logs, phases
from rpl_jax.checkpoint import CheckpointError, read_config
from rpl_jax.files import write_atomic

_WORKDIR = flags.DEFINE_string('workdir', None, 'A main-job or train_rpl.py run directory with rrf/ and distill/.',
                                required=True)
_EPISODES = flags.DEFINE_integer('episodes', 30, 'Evaluation episodes per goal.')
_SEED = flags.DEFINE_integer('seed', None, "Evaluation seed (reset keys); default: the run's eval.seed.")
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Distillations of each kind: the run\'s keys, then others.')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension; default: <workdir>/evaluation/'
                           'probe_distill_<backend>_seed<seed>_<episodes>x<steps>_repeats<repeats>.')

KINDS = ('one student for all goals', 'one student per goal')


def main(argv):
  del argv
  logs.quiet_info_logs()
  workdir = _WORKDIR.value
  if _EPISODES.value < 1 or _REPEATS.value < 1:
    raise app.UsageError(f'--episodes and --repeats must be >= 1, got {_EPISODES.value} and {_REPEATS.value}.')
  try:
    ril, teachers, run_distilled = (phases.load_policy(workdir, phase) for phase in ('ril', 'rrf', 'distill'))
    run_config = read_config(os.path.join(workdir, 'distill', 'checkpoints'))
  except (CheckpointError, FileNotFoundError) as e:
    raise app.UsageError(f'{workdir} needs finished ril, rrf and distill phases: {e}') from e
  configs = phases.build(config_dict.ConfigDict(run_config), loading=True)
  goals, steps = teachers.goals, run_config['eval']['episode_steps']
  env = KitchenEnv(KitchenConfig(backend=run_config['backend'], horizon=steps))

  # The run's distillation (phases.distillation: its data, keys and fit), and the per-goal fit on the same
  # data; each repeat after the first draws other collect and fit keys.
  config, agent, normalizers = configs.distill, teachers.agent, teachers.normalizers
  collect = jax.jit(functools.partial(distill.collect, env, agent, episodes=config.episodes_per_goal,
                                      num_steps=configs.rrf.episode_steps, levels=configs.rrf.levels))
  fit = distill.make_distill(agent, config)
  fit_one, fit_each = jax.jit(fit), jax.jit(distill.per_goal_students(fit, len(goals)))
  goal_states = jnp.asarray(evaluation.goal_states(goals, teachers.goal_values))
  start = phases.distillation_start_key(run_config['seed'])
  params = {'RIL': evaluation.tiled(ril.params, len(goals)), 'per-goal agents': teachers.params}
  for repeat in range(_REPEATS.value):
    collect_key, fit_key, _ = jax.random.split(jax.random.fold_in(start, repeat) if repeat else start, 3)
    data = collect(teachers.params, normalizers, collect_key, goal_states)
    one = fit_one(ril.params, normalizers, data, fit_key)[0]
    if not repeat:
      difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(one),
                                                                      jax.tree.leaves(run_distilled.params)))
    params[f'{KINDS[0]}, repeat {repeat}'] = evaluation.tiled(one, len(goals))
    params[f'{KINDS[1]}, repeat {repeat}'] = fit_each(ril.params, normalizers, data, fit_key)[0]

  seed = run_config['eval']['seed'] if _SEED.value is None else _SEED.value
  evaluate = evaluation.make_evaluator(env, agent, steps, values=teachers.goal_values)
  results = {}
  for name, stacked in params.items():
    results[name] = evaluation.summarize(evaluate(stacked, normalizers, jax.random.key(seed), goals, _EPISODES.value,
                                                  per_goal=True))
    print(f"{name}: {evaluation.success_count(results[name])} successes of {results[name]['episodes']}, step "
          f"completion {results[name]['step_completion']:.2f}", flush=True)
  leads = {name: evaluation.success_lead(results[name], results['RIL']) for name in list(results)[1:]}
  # Each kind's repeats pooled against RIL's one set of episodes: RIL counted once, not once per repeat.
  pooled = {}
  for kind in KINDS:
    runs = [results[f'{kind}, repeat {r}'] for r in range(_REPEATS.value)]
    pooled[kind] = evaluation.lead_from_counts(sum(map(evaluation.success_count, runs)),
                                               sum(run['episodes'] for run in runs),
                                               evaluation.success_count(results['RIL']), results['RIL']['episodes'])
  print(f"{KINDS[0]}, repeat 0: max |parameter - the run's distilled agent's| = {difference:.2e}")

  out = _OUT.value or os.path.join(workdir, 'evaluation', f"probe_distill_{run_config['backend']}_seed{seed}_"
                                   f'{_EPISODES.value}x{steps}_repeats{_REPEATS.value}')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  record = {'workdir': workdir, 'seed': seed, 'episodes': _EPISODES.value, 'episode_steps': steps, 'goals': goals,
            'repeats': _REPEATS.value,
            'distill': {'episodes_per_goal': config.episodes_per_goal, 'updates': config.updates,
                        'batch_size': config.batch_size, 'learning_rate': config.learning_rate,
                        'low_samples_per_goal': data['low'][0].shape[0] // len(goals)},
            'max_abs_difference_from_run': difference, 'results': results, 'success_lead_over_ril': leads,
            'pooled_lead_over_ril': pooled}
  write_atomic(out + '.json', lambda f: f.write(json.dumps(record, indent=1).encode()))
  text = (f'# Distillation probe of {workdir}\n\n{_EPISODES.value} episodes per goal, {steps} steps, mean actions, '
          f'evaluation seed {seed}, the same resets for every agent. Every student starts from RIL and takes '
          f'{config.updates} updates of {config.batch_size} samples on the per-goal agents\' rollouts '
          f'({config.episodes_per_goal} per goal). Repeat 0 uses the run\'s keys, so its student for all goals '
          f'is the run\'s distillation redone (max parameter difference {difference:.1e}). Cells: success % / '
          'step completion.\n\n' + evaluation.markdown_table(results, goals) + evaluation.leads_markdown(leads, 'RIL')
          + f'\n## Pooled over the {_REPEATS.value} repeats\n\n'
          + ''.join(f'- {kind}: {evaluation.lead_text(lead)}\n' for kind, lead in pooled.items()))
  write_atomic(out + '.md', lambda f: f.write(text.encode()))
  print(f'wrote {out}.json and {out}.md')


if __name__ == '__main__':
  app.run(main)
