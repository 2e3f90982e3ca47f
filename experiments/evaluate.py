"""Evaluate a run directory's agents again, on more episodes or other resets, all on the same ones.

  python experiments/evaluate.py --workdir=runs/tuned --episodes=50 --seed=7000
  python experiments/evaluate.py --workdir=runs/tuned --agents=ril,rrf,rrf_last --rrf_step=10
  python experiments/evaluate.py --workdir=runs/table1 --agents=ril_seed2,gcbc_seed2 --episodes=30
  python experiments/evaluate.py --workdir=runs/table1 --agents=ril_seed0,ril_seed1,gcbc_seed0,gcbc_seed1 --ensemble

Agents (--agents) of a main-job or train_rpl.py run: `ril`, the imitation phase's agent; `rrf`, the
per-goal agents the report evaluates (under rrf.keep_best each goal's best monitored parameters, else
the last); `rrf_last`, the parameters RRF trained to, whatever it kept; `distill`, the distilled agent
(default: ril,rrf,distill). Of an experiments/train_ril.py workdir: `<method>_seed<k>`, each run's
weight average (default: every run), and with --ensemble each method's runs among them as one more agent,
`<method>_ensemble`. They run through one per-goal evaluator (a shared agent's parameters copied to every
goal) on the same goals and reset keys, so each goal's episodes start alike for every agent and identical
parameters score identically, as in the main job's report and train_ril.py's table for the same goals,
seed and episodes (evaluation.make_evaluator).

The goals default to the run's RRF goals when an RRF agent is asked for, else its evaluation goals;
the evaluation seed, episode length and backend default to the run's (a train_ril.py workdir's seed:
phases.TABLE_EVAL_SEED, which it used for its seed-0 runs). Writes
<workdir>/evaluation/<backend>_seed<seed>_<episodes>x<steps>_<G>goals-<crc>_<agents>[_rrfstep<step>]
.json and .md (a name per request, so that none overwrites another): per agent, success and step
completion overall, per goal and per element, and the one-sided Fisher p-value of its success lead
over the first agent of --agents (evaluation.success_lead_p_value). That test takes the episodes as
independent draws: it says whether these parameters beat the first agent's, not whether the method
would over training seeds, whose spread is larger (BUILD_NOTES.md, session 26).
"""

import json
import os
import zlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from envs.kitchen import KitchenConfig, KitchenEnv
from rpl_jax import evaluation, logs, phases
from rpl_jax.checkpoint import CheckpointError, read_config
from rpl_jax.files import write_atomic

AGENTS = {'ril': ('ril', True), 'rrf': ('rrf', True), 'rrf_last': ('rrf', False), 'distill': ('distill', True)}
PHASES = ('distill', 'rrf', 'ril')  # a main-job run's, latest first

_WORKDIR = flags.DEFINE_string('workdir', None, 'A main-job, train_rpl.py or train_ril.py run directory.',
                                required=True)
_AGENTS = flags.DEFINE_list('agents', [], f'Of a main-job run any of {list(AGENTS)} (default: ril,rrf,distill); of a '
                            'train_ril.py workdir <method>_seed<k> (default: every run).')
_GOALS = flags.DEFINE_string('goals', '', "Comma-separated compound goals or 'all'; empty: the run's (see above).")
_EPISODES = flags.DEFINE_integer('episodes', 50, 'Episodes per goal.')
_SEED = flags.DEFINE_integer('seed', None, "Evaluation seed (reset keys); default: the run's eval.seed, or a "
                            'train_ril.py workdir\'s phases.TABLE_EVAL_SEED.')
_EPISODE_STEPS = flags.DEFINE_integer('episode_steps', None,
                                      "Steps per episode; default: the run's eval.episode_steps.")
_BACKEND = flags.DEFINE_string('backend', None, "Env backend; default: the run's.")
_RRF_STEP = flags.DEFINE_integer('rrf_step', None, 'The RRF checkpoint step (iterations) to load; default: the last.')
_ENSEMBLE = flags.DEFINE_bool('ensemble', False, 'Of a train_ril.py workdir: also evaluate the --agents runs of each '
                               'method that has two or more of them as one agent, `<method>_ensemble`, acting with '
                               'the mean of their means at each level (rollout.ensemble).')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension; default: <workdir>/evaluation/'
                           '<backend>_seed<seed>_<episodes>x<steps>_<goals>_<agents>[_rrfstep<step>].')


def is_table(workdir: str) -> bool:
  """Whether `workdir` is an experiments/train_ril.py workdir rather than a main-job run."""
  return not any(os.path.isdir(os.path.join(workdir, phase, 'checkpoints')) for phase in PHASES)


def load_table_agents(workdir: str, names: list[str]) -> dict[str, phases.Policy]:
  """The asked-for `<method>_seed<k>` runs of a train_ril.py workdir (default: all of them)."""
  try:
    table = phases.read_table(workdir)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f'{workdir} has no main-job phase (ril, rrf, distill) and is no train_ril.py workdir: '
                         f'{e}') from e
  runs = [f'{method}_seed{seed}' for method, summaries in table['results'].items() for seed in range(len(summaries))]
  unknown = [name for name in names if name not in runs]
  if unknown:
    raise app.UsageError(f'--agents must name runs of the train_ril.py workdir {workdir}, i.e. some of {runs}; '
                         f'it has no {unknown}.')
  policies = {}
  for name in names or runs:
    method, seed = name.rsplit('_seed', 1)
    try:
      policies[name] = phases.load_table_run(workdir, method, int(seed))[0]
    except CheckpointError as e:
      raise app.UsageError(f'cannot load {name}: {e}') from e
  return policies


def load_agents(workdir: str, names: list[str], rrf_step: int | None) -> dict[str, phases.Policy]:
  """The asked-for agents of a main-job run directory, by --agents name; a phase the run lacks fails here."""
  names = names or ['ril', 'rrf', 'distill']
  unknown = [name for name in names if name not in AGENTS]
  if unknown:
    raise app.UsageError(f'--agents must name some of {list(AGENTS)}, got {names}.')
  policies = {}
  for name in names:
    phase, kept = AGENTS[name]
    try:
      policies[name] = phases.load_policy(workdir, phase, rrf_step if phase == 'rrf' else None, kept)
    except CheckpointError as e:
      raise app.UsageError(f'cannot load {name} (has the {phase} phase run?): {e}') from e
  return policies


def ensembles(policies: dict[str, phases.Policy]) -> dict[str, phases.Policy]:
  """`<method>_ensemble`: the train_ril.py runs `policies` (`<method>_seed<k>`) of each method with two or
  more of them, as one agent. A method's runs share network shapes and normalizers (the seeds of one table do)."""
  by_method = {}
  for name, policy in policies.items():
    by_method.setdefault(name.rsplit('_seed', 1)[0], []).append(policy)
  if all(len(members) < 2 for members in by_method.values()):
    raise app.UsageError(f'--ensemble needs two or more runs of one method in --agents, got {list(policies)}.')
  agents = {}
  for method, members in by_method.items():
    if len(members) < 2:
      print(f'--ensemble: {method} has one run in --agents, so no ensemble of it.')
      continue
    try:
      agents[f'{method}_ensemble'] = phases.ensemble(members)
    except ValueError as e:
      raise app.UsageError(f'--ensemble: {method}: {e}') from e
  return agents


def run_defaults(workdir: str) -> tuple[str, int, int]:
  """The run's backend, evaluation seed and episode steps: a main-job run's from its latest phase's
  checkpoints (a train_rpl.py run has no ril/), a train_ril.py workdir's from its results.json."""
  if is_table(workdir):
    config = phases.read_table(workdir)['config']
    return config['backend'], phases.TABLE_EVAL_SEED, config['episode_steps']
  phase = next(p for p in PHASES if os.path.isdir(os.path.join(workdir, p, 'checkpoints')))
  config = read_config(os.path.join(workdir, phase, 'checkpoints'))
  return config['backend'], config['eval']['seed'], config['eval']['episode_steps']


def per_goal_agent(name: str) -> bool:
  """Whether agent `name` has parameters per RRF goal (the others act alike for every goal)."""
  return name in AGENTS and AGENTS[name][0] == 'rrf'


def stacked(name: str, policy: phases.Policy, goals: tuple[str, ...]):
  """[G, ...] parameters for `goals`: an RRF agent's rows for them, or copies of a shared agent's."""
  if not per_goal_agent(name):
    return evaluation.tiled(policy.params, len(goals))
  missing = [goal for goal in goals if goal not in policy.goals]
  if missing:
    raise app.UsageError(f'the RRF agents cover {list(policy.goals)}, not {missing}: pass --goals within them, '
                         'or drop rrf and rrf_last from --agents.')
  rows = jnp.array([policy.goals.index(goal) for goal in goals])
  return jax.tree.map(lambda x: x[rows], policy.params)


def output_name(backend: str, seed: int, episodes: int, steps: int, goals: tuple[str, ...], agents: list[str],
                rrf_step: int | None) -> str:
  """The default output name: distinct for every request that could give other numbers, so that no
  evaluation overwrites another's."""
  goal_tag = f'{len(goals)}goals-{zlib.crc32(",".join(goals).encode()):08x}'
  step_tag = '' if rrf_step is None else f'_rrfstep{rrf_step}'
  return f'{backend}_seed{seed}_{episodes}x{steps}_{goal_tag}_{"+".join(agents)}{step_tag}'


def report(workdir: str, seed: int, episodes: int, steps: int, results: dict[str, dict], reference: str,
           leads: dict[str, dict], goals: tuple[str, ...]) -> str:
  """Markdown: the per-goal table, the per-element completion and the success leads."""
  elements = list(next(iter(results.values()))['per_element'])
  text = (f'# Evaluation of {workdir}\n\n{episodes} episodes per goal, {steps} steps, mean actions, evaluation '
          f'seed {seed}, the same resets for every agent. Cells: success % / step completion.\n\n'
          + evaluation.markdown_table(results, goals) + '\n## Per element (completion %, over the episodes whose '
          'goal has it)\n\n| element | ' + ' | '.join(results) + ' |\n|' + '---|' * (1 + len(results)) + '\n'
          + ''.join(f'| {e} | ' + ' | '.join(f"{100 * s['per_element'][e]:.0f}" for s in results.values()) + ' |\n'
                    for e in elements))
  if leads:
    text += evaluation.leads_markdown(leads, reference)
  return text


def main(argv):
  del argv
  logs.quiet_info_logs()
  workdir = _WORKDIR.value
  table = is_table(workdir)
  if table and _RRF_STEP.value is not None:
    raise app.UsageError('--rrf_step is for a main-job run; a train_ril.py workdir has no RRF phase.')
  policies = load_table_agents(workdir, _AGENTS.value) if table else load_agents(workdir, _AGENTS.value,
                                                                                 _RRF_STEP.value)
  if _ENSEMBLE.value:
    if not table:
      raise app.UsageError('--ensemble is for the runs of a train_ril.py workdir.')
    policies |= ensembles(policies)
  first = next(iter(policies.values()))
  if any(policy.goal_values != first.goal_values for policy in policies.values()):
    raise app.UsageError('the agents were trained for different goal states (goal_values); evaluate them apart.')
  run_backend, run_seed, run_steps = run_defaults(workdir)
  rrf_goals = next((p.goals for name, p in policies.items() if per_goal_agent(name)), None)
  backend = _BACKEND.value or run_backend
  try:
    goals = evaluation.check_goals(phases.goal_list(_GOALS.value) if _GOALS.value else rrf_goals or first.goals,
                                   _EPISODES.value)
    phases.check_backend(backend)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  params = {name: stacked(name, policy, goals) for name, policy in policies.items()}  # fails before any rollout
  seed = run_seed if _SEED.value is None else _SEED.value
  steps = _EPISODE_STEPS.value or run_steps
  env = KitchenEnv(KitchenConfig(backend=backend, horizon=steps))
  evaluators = {}  # per agent structure: a train_ril.py table holds hierarchical and flat agents
  results = {}
  for name, policy in policies.items():
    if policy.agent not in evaluators:
      evaluators[policy.agent] = evaluation.make_evaluator(env, policy.agent, steps, values=first.goal_values)
    results[name] = evaluation.summarize(evaluators[policy.agent](params[name], policy.normalizers,
                                                                  jax.random.key(seed), goals, _EPISODES.value,
                                                                  per_goal=True))
    print(f"{name}: success {results[name]['success']:.3f}, step completion {results[name]['step_completion']:.2f}",
          flush=True)
  reference = next(iter(results))
  leads = {name: evaluation.success_lead(results[name], results[reference]) for name in results if name != reference}
  out = _OUT.value or os.path.join(workdir, 'evaluation', output_name(backend, seed, _EPISODES.value, steps,
                                                                    goals, list(policies), _RRF_STEP.value))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  record = {'workdir': workdir, 'seed': seed, 'episodes': _EPISODES.value, 'episode_steps': steps,
            'backend': backend, 'rrf_step': _RRF_STEP.value, 'goals': goals, 'results': results,
            'success_lead_over': reference,
            'success_lead_p': {name: lead['p'] for name, lead in leads.items()}}
  write_atomic(out + '.json', lambda f: f.write(json.dumps(record, indent=1).encode()))
  text = report(workdir, seed, _EPISODES.value, steps, results, reference, leads, goals)
  write_atomic(out + '.md', lambda f: f.write(text.encode()))
  print(text)
  print(f'wrote {out}.json and {out}.md')


if __name__ == '__main__':
  app.run(main)
