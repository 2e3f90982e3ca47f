"""Methods x seeds on one data set and one evaluation: RPL's variants, the flat baselines and the
ablations, each a config of the main job (experiments/main.py); every run's report also carries the
nearest-neighbour baseline.

  python experiments/compare.py --workdir=runs/compare --methods=rpl_dapg,gcbc_ft,bc_ft --seeds=0,1,2
  python experiments/compare.py --workdir=runs/compare_paper --config.preset=paper --methods=all

The --config flags are the main job's (experiments/configs/main.py) and apply to every run. Each run
is the main-job directory <workdir>/<method>/seed<k> (seed k; the evaluation seed is shared, so all
methods face the same episodes; a method that is another's config on this preset shares its run,
see run_directory); the demos are generated once into <workdir>/demos. Rerunning the
same command skips finished runs and resumes an interrupted one. Writes <workdir>/compare.md (the
table, mean +- std over seeds), compare.json, curves.png (the paper's Fig. 6: success and step
completion of the per-goal fine-tuned agents against environment steps, mean +- std over seeds, for
the sampled rollouts and, where the runs monitored it, the mean actions) and,
when ablation methods ran, ablations.png (Fig. 7: W_l and the low-level reward).
"""

import json
import os

from absl import app
from absl import flags
import numpy as np
from matplotlib import pyplot as plt

import main  # experiments/main.py, beside this file: its --config and --workdir flags
from rpl_jax import evaluation, phases, rrf
from rpl_jax.files import write_atomic

WINDOWS = (10, 30, 60, 120)
REWARDS = ('sparse', 'euclidean', 'elementwise')
METHODS = {  # name -> main-job config overrides
    'rpl_npg': {'rrf.variant': 'npg'},
    'rpl_dapg': {'rrf.variant': 'dapg'},
    'rpl_iril': {'rrf.variant': 'iril'},
    'gcbc_ft': {'ril.method': 'gcbc', 'rrf.variant': 'npg'},
    'bc_ft': {'ril.method': 'gcbc_final', 'rrf.variant': 'npg'},
    'dapg_gcbc': {'ril.method': 'gcbc', 'rrf.variant': 'dapg'},
    'dapg_bc': {'ril.method': 'gcbc_final', 'rrf.variant': 'dapg'},
    # Hierarchical IL on the demos cut where each element was first complete (generator metadata), then RRF.
    'oracle_rrf': {'ril.method': 'oracle', 'rrf.variant': 'dapg'},
    # Off-policy IL+RL on the same env batch: AWR actor, Q on demos plus replay (rpl_jax/awopt.py).
    'awopt': {'ril.method': 'gcbc', 'rrf.variant': 'awopt'},
    # RIL's low level kept, the high level learned from scratch by NPG; HIRO-style: both from scratch.
    'pretrain_low': {'rrf.variant': 'npg', 'rrf.finetune_high': True, 'rrf.finetune_low': False,
                     'rrf.from_scratch': 'high'},
    'hiro_npg': {'rrf.variant': 'npg', 'rrf.finetune_high': True, 'rrf.from_scratch': 'low,high'},
    **{f'rpl_dapg_wl{w}': {'rrf.variant': 'dapg', 'ril.window_low': w} for w in WINDOWS if w != 30},
    **{f'rpl_dapg_{r}': {'rrf.variant': 'dapg', 'rrf.low_reward': r} for r in REWARDS},
}
AGENTS = ('imitation', 'rrf', 'distilled', 'nearest neighbour')  # the columns of a run's evaluation
LEAD_KINDS = ('rrf', 'distilled')  # whose success lead over the imitation agent a run's report gives

_METHODS = flags.DEFINE_list('methods', ['rpl_dapg', 'gcbc_ft', 'bc_ft'], f"Methods, or 'all': {sorted(METHODS)}.")
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds of every method.')


def method_config(base, method: str, seed: int):
  config = base.copy_and_resolve_references()
  for path, value in METHODS[method].items():
    section, name = path.split('.')
    config[section][name] = value
  config.seed = seed
  return config


def run_directory(workdir: str, base, method: str, seed: int) -> str:
  """<workdir>/<method>/seed<k>, shared by methods whose configs coincide on this base: the first such
  method in METHODS owns it (at the quick preset, whose reward is euclidean, rpl_dapg_euclidean is rpl_dapg)."""
  config = method_config(base, method, seed).to_dict()
  owner = next(m for m in METHODS if method_config(base, m, seed).to_dict() == config)
  return os.path.join(workdir, owner, f'seed{seed}')


def run_results(workdir: str) -> dict:
  """A finished run's evaluation by agent kind (AGENTS) and its RRF curve."""
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  rrf_key = next(k for k in saved['results'] if k.startswith('RRF'))
  imitation_key = main.IMITATION[saved['config']['ril']['method']]
  by_kind = dict(zip(AGENTS, (saved['results'][k] for k in (imitation_key, rrf_key, 'distilled', 'nearest neighbour'))))
  leads = saved.get('success_lead_over_imitation')  # absent from runs written before the report had it
  if leads is not None:
    leads = {'rrf': leads[rrf_key], 'distilled': leads['distilled']}
  r = saved['config']['rrf']
  env_steps_per_iteration = len(phases.goal_list(r['goals'])) * r['num_envs'] * r['episode_steps']
  with open(os.path.join(workdir, 'metrics_rrf.jsonl')) as f:
    curve = [json.loads(line) for line in f]
  return {'agents': by_kind, 'leads': leads, 'env_steps': [c['step'] * env_steps_per_iteration for c in curve],
          **{name: [c[name] for c in curve] for name in rrf.CURVES if name in curve[0]}}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
  """Per method and agent kind: mean and std over seeds of success and step completion; per fine-tuned
  kind (LEAD_KINDS), its success lead over the imitation agent with every seed's episodes pooled
  (evaluation.pooled_lead; None where a run predates the report's leads)."""
  table = {}
  for method, seeds in runs.items():
    table[method] = {}
    for kind in AGENTS:
      for metric in ('success', 'step_completion'):
        values = [s['agents'][kind][metric] for s in seeds]
        table[method][f'{kind}/{metric}'] = {'mean': float(np.mean(values)), 'std': float(np.std(values)),
                                             'seeds': len(values)}
    for kind in LEAD_KINDS:
      leads = [None if s['leads'] is None else s['leads'][kind] for s in seeds]
      table[method][f'{kind}/lead'] = None if None in leads else evaluation.pooled_lead(leads)
  return table


def markdown(table: dict[str, dict]) -> str:
  header = '| method | ' + ' | '.join(AGENTS) + ' |\n|' + '---|' * (1 + len(AGENTS)) + '\n'

  def cell(row, kind):
    s, c = row[f'{kind}/success'], row[f'{kind}/step_completion']
    return f"{100 * s['mean']:.0f} +- {100 * s['std']:.0f} % / {c['mean']:.2f} +- {c['std']:.2f}"

  def lead(row, kind):
    return 'not recorded' if row[f'{kind}/lead'] is None else evaluation.lead_text(row[f'{kind}/lead'])

  leads = ('\n| method | ' + ' | '.join(f'{kind}: successes against imitation' for kind in LEAD_KINDS) + ' |\n|'
           + '---|' * (1 + len(LEAD_KINDS)) + '\n'
           + ''.join(f'| {m} | ' + ' | '.join(lead(row, k) for k in LEAD_KINDS) + ' |\n' for m, row in table.items()))
  return (header + ''.join(f'| {m} | ' + ' | '.join(cell(row, k) for k in AGENTS) + ' |\n' for m, row in table.items())
          + leads)


def plot_curves(runs: dict[str, list[dict]], path: str) -> None:
  """Fig. 6: the sampled rollouts' curves and, when every run monitored them, the mean actions'."""
  metrics = [m for m in rrf.CURVES if all(m in s for seeds in runs.values() for s in seeds)]
  rows = len(metrics) // 2  # success and step completion side by side, sampled then mean actions
  fig, axes = plt.subplots(rows, 2, figsize=(12, 3.5 * rows), squeeze=False)
  colors = plt.get_cmap('tab10').colors
  for ax, metric in zip(axes.flat, metrics):
    for i, (method, seeds) in enumerate(runs.items()):
      # Ten colours, then the same colours dashed, then dotted: every method keeps its own line.
      color, style = colors[i % len(colors)], ('-', '--', ':')[(i // len(colors)) % 3]
      x = np.asarray(seeds[0]['env_steps'])
      y = np.asarray([s[metric] for s in seeds], float)
      ax.plot(x, y.mean(0), label=method, color=color, linestyle=style)
      ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=color, alpha=0.15)
    ax.set_xlabel('environment steps (RRF)')
    actions, name = metric.split('/') if '/' in metric else ('sampled', metric)
    ax.set_title(f"per-goal fine-tuning, {actions.replace('deterministic', 'mean')} actions: {name}", fontsize=9)
  axes[0, 1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_ablations(table: dict[str, dict], path: str) -> bool:
  """Fig. 7-style bars of the RRF agents' step completion over W_l and over the reward; False when no
  ablation ran."""
  groups = {'W_l (RIL low-level window)': {str(w): 'rpl_dapg' if w == 30 else f'rpl_dapg_wl{w}' for w in WINDOWS},
            'low-level reward': {r: f'rpl_dapg_{r}' for r in REWARDS}}
  groups = {title: {label: m for label, m in group.items() if m in table} for title, group in groups.items()}
  groups = {title: group for title, group in groups.items() if len(group) > 1}
  if not groups:
    return False
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
  for ax, (title, group) in zip(axes[0], groups.items()):
    rows = [table[m] for m in group.values()]
    for offset, kind in ((-0.2, 'imitation'), (0.2, 'rrf')):
      ax.bar(np.arange(len(rows)) + offset, [r[f'{kind}/step_completion']['mean'] for r in rows], 0.4,
             yerr=[r[f'{kind}/step_completion']['std'] for r in rows], label=kind)
    ax.set_xticks(range(len(rows)), list(group))
    ax.set_title(title, fontsize=9)
    ax.set_ylabel('step completion')
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def compare(argv):
  del argv
  methods = sorted(METHODS) if _METHODS.value == ['all'] else _METHODS.value
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f'unknown methods {unknown}; choose from {sorted(METHODS)} or all.')
  seeds = [int(s) for s in _SEEDS.value]
  workdir = main._WORKDIR.value
  base = main.resolve_config()
  base.demos.path = main.demos_path(base, workdir)
  runs = {}
  for method in methods:
    runs[method] = []
    for seed in seeds:
      run_dir = run_directory(workdir, base, method, seed)
      if not os.path.exists(os.path.join(run_dir, 'results.json')):
        print(f'--- {method}, seed {seed}: {run_dir}', flush=True)
        main.main([], method_config(base, method, seed), run_dir)
      runs[method].append(run_results(run_dir))
  table = summarize(runs)
  plot_curves(runs, os.path.join(workdir, 'curves.png'))
  figures = ['curves.png'] + ['ablations.png'] * plot_ablations(table, os.path.join(workdir, 'ablations.png'))
  report = (f'# rpl_jax comparison: {workdir}\n\npreset `{base.preset}`, seeds {seeds}, one data set '
            f'({base.demos.path}) and one evaluation (seed {base.eval.seed}).\n\nCells: success % / step completion, '
            'mean +- std over seeds. imitation: RIL, or GCBC / BC for the flat baselines; rrf: the per-goal '
            'fine-tuned agents on their goals; distilled: one agent on every evaluation goal; nearest '
            "neighbour: the closest demo replayed open loop. The second table pools the seeds' episodes: "
            "successes against the imitation agent's on the same resets, and the one-sided Fisher p-value of "
            "the lead, which takes every episode as an independent draw.\n\nThe paper's ordering (its Fig. 6): "
            'RPL variants > flat fine-tuning > pre-train-low-level > HIRO, and closed-loop RPL > nearest neighbour.\n\n'
            + markdown(table) + '\n' + ''.join(f'![{f}]({f})\n\n' for f in figures))
  write_atomic(os.path.join(workdir, 'compare.md'), lambda f: f.write(report.encode()))
  write_atomic(os.path.join(workdir, 'compare.json'),
               lambda f: f.write(json.dumps({'methods': {m: METHODS[m] for m in methods}, 'seeds': seeds,
                                             'table': table, 'runs': runs}, indent=1).encode()))
  print(markdown(table))
  print(f"wrote {os.path.join(workdir, 'compare.md')}")


if __name__ == '__main__':
  app.run(compare)
