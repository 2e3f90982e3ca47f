"""Does distillation keep the per-goal agents' gain? One student for all goals against one per goal.

For a main-job or train_rpl.py run with RRF and distillation phases, this redoes the run's
distillation: the kept per-goal agents' rollouts, collected as the run collected them (its distill
config, seed and keys), fitted from RIL's parameters (a) into one student for every goal, as the
run did (`max_abs_difference_from_run` says how far that student is from the run's own distilled
agent: 0 up to float rounding), and (b) into one student per goal, each on its own teacher's samples
alone (distill.per_goal_students), with the same updates each. Then RIL, the per-goal agents and
both students run on the same resets (evaluation.make_evaluator, per goal). If (b) keeps the
teachers' lead over RIL and (a) does not, one student cannot hold the teachers' goal-specific
behaviour at once.

Writes --out.json and .md (default <workdir>/evaluation/probe_distill_<backend>_seed<seed>_<episodes>x<steps>):
per agent the success, step completion and per-goal table, and each one's success lead over RIL.

  python experiments/probe_distill.py --workdir=runs/tuned --episodes=30

Findings: BUILD_NOTES.md, "Why the distilled agent gives back the per-goal gain".
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
_OUT = flags.DEFINE_string('out', None, 'Output path without extension; default: <workdir>/evaluation/'
                           'probe_distill_<backend>_seed<seed>_<episodes>x<steps>.')

AGENTS = ('RIL', 'per-goal agents', 'one student for all goals', 'one student per goal')


def main(argv):
  del argv
  logs.quiet_info_logs()
  workdir = _WORKDIR.value
  try:
    ril, teachers, run_distilled = (phases.load_policy(workdir, phase) for phase in ('ril', 'rrf', 'distill'))
    run_config = read_config(os.path.join(workdir, 'distill', 'checkpoints'))
  except (CheckpointError, FileNotFoundError) as e:
    raise app.UsageError(f'{workdir} needs finished ril, rrf and distill phases: {e}') from e
  configs = phases.build(config_dict.ConfigDict(run_config), loading=True)
  goals = teachers.goals
  if _EPISODES.value < 1:
    raise app.UsageError(f'--episodes must be >= 1, got {_EPISODES.value}.')
  env = KitchenEnv(KitchenConfig(backend=run_config['backend'], horizon=run_config['eval']['episode_steps']))

  # The run's distillation (phases.distillation): its data, keys and fit, then the per-goal fit beside it.
  config, agent, normalizers = configs.distill, teachers.agent, teachers.normalizers
  collect_key, fit_key, _ = jax.random.split(phases.distillation_start_key(run_config['seed']), 3)
  collect = jax.jit(functools.partial(distill.collect, env, agent, episodes=config.episodes_per_goal,
                                      num_steps=configs.rrf.episode_steps, levels=configs.rrf.levels))
  data = collect(teachers.params, normalizers, collect_key,
                 jnp.asarray(evaluation.goal_states(goals, teachers.goal_values)))
  fit = distill.make_distill(agent, config)
  one, _ = jax.jit(fit)(ril.params, normalizers, data, fit_key)
  per_goal, _ = jax.jit(distill.per_goal_students(fit, len(goals)))(ril.params, normalizers, data, fit_key)
  difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(one),
                                                                  jax.tree.leaves(run_distilled.params)))

  seed = run_config['eval']['seed'] if _SEED.value is None else _SEED.value
  steps = run_config['eval']['episode_steps']
  evaluate = evaluation.make_evaluator(env, agent, steps, values=teachers.goal_values)
  stacked = dict(zip(AGENTS, (evaluation.tiled(ril.params, len(goals)), teachers.params,
                              evaluation.tiled(one, len(goals)), per_goal)))
  results = {}
  for name, params in stacked.items():
    results[name] = evaluation.summarize(evaluate(params, normalizers, jax.random.key(seed), goals, _EPISODES.value,
                                                  per_goal=True))
    print(f"{name}: {evaluation.success_count(results[name])} successes of {results[name]['episodes']}, step "
          f"completion {results[name]['step_completion']:.2f}", flush=True)
  leads = {name: evaluation.success_lead(results[name], results['RIL']) for name in AGENTS[1:]}
  print(f'one student for all goals: max |parameter - the run\'s distilled agent\'s| = {difference:.2e}')

  out = _OUT.value or os.path.join(workdir, 'evaluation', f"probe_distill_{run_config['backend']}_seed{seed}_"
                                   f'{_EPISODES.value}x{steps}')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  record = {'workdir': workdir, 'seed': seed, 'episodes': _EPISODES.value, 'episode_steps': steps, 'goals': goals,
            'distill': {'episodes_per_goal': config.episodes_per_goal, 'updates': config.updates,
                        'batch_size': config.batch_size, 'learning_rate': config.learning_rate,
                        'low_samples_per_goal': data['low'][0].shape[0] // len(goals)},
            'max_abs_difference_from_run': difference, 'results': results, 'success_lead_over_ril': leads}
  write_atomic(out + '.json', lambda f: f.write(json.dumps(record, indent=1).encode()))
  text = (f'# Distillation probe of {workdir}\n\n{_EPISODES.value} episodes per goal, {steps} steps, mean actions, '
          f'evaluation seed {seed}, the same resets for every agent. Both students start from RIL and take '
          f'{config.updates} updates of {config.batch_size} samples on the per-goal agents\' rollouts '
          f'({config.episodes_per_goal} per goal); the one for all goals is the run\'s distillation redone '
          f'(max parameter difference {difference:.1e}). Cells: success % / step completion.\n\n'
          + evaluation.markdown_table(results, goals) + evaluation.leads_markdown(leads, 'RIL'))
  write_atomic(out + '.md', lambda f: f.write(text.encode()))
  print(f'wrote {out}.json and {out}.md')


if __name__ == '__main__':
  app.run(main)
