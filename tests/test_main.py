"""The main job end to end: config validation before anything compiles, the smoke preset writing its
report, TensorBoard files and PNGs, and SIGKILL-then-resume ending bit for bit where an uninterrupted
run ends (every phase's logged metrics, which are functions of the parameters at each step)."""

import csv
import functools
import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib

import jax
import numpy as np
import pytest
from ml_collections import config_dict

from envs.kitchen import KitchenConfig, KitchenEnv, expert
from rpl_jax import evaluation, phases
from rpl_jax.checkpoint import latest_step, load_state, read_config
from rpl_jax.data.demos import load_padded, read_element_steps, read_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'experiments', 'main.py')
_SPEC = importlib.util.spec_from_file_location('main_config', os.path.join(REPO, 'experiments', 'configs', 'main.py'))
main_config = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(main_config)


def launch(*args: str, **env: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, MAIN, *args], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, **env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_train_rpl(*args: str, **env: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'train_rpl.py'), *args], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO, **env), capture_output=True, text=True, timeout=900)


def run_main(*args: str, timeout: float = 900) -> str:
  process = launch(*args)
  output = process.communicate(timeout=timeout)[0]
  assert process.returncode == 0, output[-3000:]
  return output


# --- validation -----------------------------------------------------------------------------------


def smoke() -> config_dict.ConfigDict:
  return main_config.get_config('smoke')


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.ril, 'window_low', 300), 'window_high must be >= window_low'),
    (lambda c: setattr(c.rrf, 'variant', 'ppo'), 'unknown RRF variant'),
    (lambda c: setattr(c.rrf, 'damping', -1.0), 'damping >= 0'),
    (lambda c: setattr(c.rrf, 'goals', 'microwave-toaster'), 'unknown kitchen element'),
    (lambda c: setattr(c.rrf, 'goals', ' , '), 'need one or more distinct goals'),
    (lambda c: setattr(c.eval, 'goals', 'kettle-microwave,microwave,kettle-microwave'), 'distinct goals'),
    (lambda c: (setattr(c.rrf, 'finetune_high', True), setattr(c.rrf, 'value_batch_size', 3)),
     'exceeds the 2 high-level samples'),
    (lambda c: setattr(c, 'backend', 'warp'), 'unknown backend'),
    (lambda c: setattr(c.rrf, 'iterations', 0), 'rrf.iterations must be >= 1'),
    (lambda c: setattr(c.rrf, 'buffer_episodes', 1), 'must hold one iteration'),
    (lambda c: setattr(c.ril, 'corrective_noise', -0.1), 'corrective_noise must be'),
    (lambda c: setattr(c.ril, 'subgoal_noise', float('nan')), 'subgoal_noise must be'),
    (lambda c: setattr(c.ril, 'subgoal_finger_noise', -0.01), 'subgoal_finger_noise must be'),
    (lambda c: setattr(c.ril, 'average_decay', 1.0), 'average_decay must be'),
    (lambda c: setattr(c.rrf, 'exploration_log_std', float('nan')), 'exploration_log_std must be finite'),
    (lambda c: setattr(c.rrf, 'exploration_log_std', -4.0), "below the policies' log_std floor"),
    (lambda c: (setattr(c.rrf, 'variant', 'awopt'), setattr(c.ril, 'method', 'gcbc'),
                setattr(c.rrf, 'exploration_log_std', -2.0)), 'applies to the NPG variants'),
    (lambda c: (setattr(c.rrf, 'variant', 'awopt'), setattr(c.ril, 'method', 'gcbc'),
                setattr(c.rrf, 'from_scratch', 'low')), 'from_scratch apply to the NPG variants'),
    (lambda c: setattr(c, 'goal_values', 'human'), 'goal_values must be one of'),
    (lambda c: setattr(c.rrf, 'monitor_episodes', -1), 'monitor_episodes must be >= 0'),
    (lambda c: (setattr(c.rrf, 'monitor_episodes', 0), setattr(c.rrf, 'keep_best', True)),
     'keep_best selects parameters by the monitor'),
])
def test_invalid_configs_fail_with_a_message(change, message):
  config = smoke()
  change(config)
  with pytest.raises(ValueError, match=message):
    phases.build(config)


def test_a_saved_run_builds_for_loading_on_any_host():
  """load_policy builds a saved run's configs for its agents alone: an env backend and a device mesh
  this host lacks (an MJX run over 2 devices, evaluated on one CPU) are not checked, as training checks them."""
  if jax.default_backend() != 'cpu' or jax.device_count() != 1:
    pytest.skip('needs a host with one CPU device')
  config = smoke()
  config.backend, config.mesh.goal = 'mjx', 2
  with pytest.raises(ValueError, match="'mjx' is unavailable"):
    phases.build(config)
  config.backend = 'cpu'
  with pytest.raises(ValueError, match='goal axis of 2 does not divide the 1 devices'):
    phases.build(config)
  config.backend = 'mjx'
  assert phases.build(config, loading=True).mesh.size == 1


def test_distillation_settings_reach_its_config():
  """distill.* build the phase's DistillConfig; a run saved before `distill.decay` existed fitted at a constant rate."""
  config = smoke()
  config.distill.decay, config.distill.updates = True, 7
  built = phases.build(config).distill
  assert (built.decay, built.updates, built.episodes_per_goal) == (True, 7, config.distill.episodes_per_goal)
  del config.distill.decay
  assert phases.build(config).distill.decay is False


def test_mjx_needs_an_accelerator():
  """(Sizes the device mesh does not divide: tests/test_parallel.py, on 4 devices.)"""
  config = smoke()
  config.backend = 'mjx'
  if jax.default_backend() != 'cpu':
    pytest.skip('this host has an accelerator')
  with pytest.raises(ValueError, match="'mjx' is unavailable"):
    phases.build(config)


def test_unknown_presets_keys_and_bad_combinations_fail_on_the_command_line(tmp_path):
  with pytest.raises(ValueError, match='unknown preset'):
    main_config.get_config('huge')
  for args, message in [(['--config.rrf.nope=1'], 'nope'),
                        (['--config.ril.window_low=300'], 'window_high must be >= window_low')]:
    process = launch(f'--workdir={tmp_path}', '--config.preset=smoke', *args)
    output = process.communicate(timeout=300)[0]
    assert process.returncode != 0 and message in output, output[-2000:]
    assert not glob.glob(str(tmp_path / '*' / 'checkpoints'))  # failed before any phase ran


@functools.cache
def _compare_module():  # once: its absl flags are defined at import
  sys.path.insert(0, os.path.join(REPO, 'experiments'))
  try:
    spec = importlib.util.spec_from_file_location('compare', os.path.join(REPO, 'experiments', 'compare.py'))
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
  finally:
    sys.path.remove(os.path.join(REPO, 'experiments'))
  return compare


def test_every_compared_method_is_a_valid_config():
  """experiments/compare.py's methods (baselines and ablations) pass the main job's validation at the
  smoke and quick presets, and each changes the config it names."""
  compare = _compare_module()
  for preset in ('smoke', 'quick'):
    for method, overrides in compare.METHODS.items():
      config = compare.method_config(main_config.get_config(preset), method, seed=5)
      configs = phases.build(config)
      assert config.seed == 5 and all(config[p.split('.')[0]][p.split('.')[1]] == v for p, v in overrides.items())
      assert (configs.bc.method, configs.rrf.variant) == (config.ril.method, config.rrf.variant), method


def test_compared_methods_with_one_config_share_one_run():
  """The reward ablation's default-reward arm is rpl_dapg itself: euclidean at the quick preset,
  sparse at the paper preset; the other arms get their own runs."""
  compare = _compare_module()
  directory = lambda preset, method: compare.run_directory('w', main_config.get_config(preset), method, 2)
  assert directory('quick', 'rpl_dapg_euclidean') == os.path.join('w', 'rpl_dapg', 'seed2')
  assert directory('quick', 'rpl_dapg_sparse') == os.path.join('w', 'rpl_dapg_sparse', 'seed2')
  assert directory('paper', 'rpl_dapg_sparse') == os.path.join('w', 'rpl_dapg', 'seed2')
  assert directory('paper', 'rpl_dapg_euclidean') == os.path.join('w', 'rpl_dapg_euclidean', 'seed2')
  assert directory('quick', 'rpl_dapg_wl10') == os.path.join('w', 'rpl_dapg_wl10', 'seed2')


def test_every_preset_passes_validation():
  for preset, overrides in main_config.PRESETS.items():
    config = main_config.get_config(preset)
    phases.build(config)  # raises on a bad combination
    assert all(config[p.split('.')[0]][p.split('.')[1]] == v for p, v in overrides.items()), preset
  tuned = phases.build(main_config.get_config('tuned')).rrf
  assert (tuned.exploration_log_std, tuned.keep_best, tuned.monitor_episodes) == (-3.0, True, 16)


def resolved_config(*args: str) -> dict:
  """main.resolve_config() under the command line `main.py *args`, as JSON. In a fresh process: config_flags
  reads sys.argv when the flags are defined, on importing main.py."""
  code = ('import json, sys; sys.argv[0] = "main.py"; sys.path.insert(0, "experiments"); import main; '
          'main.flags.FLAGS(sys.argv); print(json.dumps(main.resolve_config().to_dict()))')
  process = subprocess.run([sys.executable, '-c', code, *args], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=300)
  assert process.returncode == 0, process.stderr[-2000:]
  return json.loads(process.stdout.splitlines()[-1])


def test_a_preset_starts_from_the_defaults_and_overrides_win():
  """--config.preset=paper on main.py's command line gives get_config('paper'): nothing is left over
  from the config file's default preset (quick's euclidean low reward; the paper's is sparse), and the
  other --config.* overrides win over the preset."""
  expected = main_config.get_config('paper')
  expected.rrf.num_envs = 3
  config = resolved_config('--config.preset=paper', '--config.rrf.num_envs=3')
  assert config == json.loads(json.dumps(expected.to_dict()))
  assert config['rrf']['low_reward'] == 'sparse' != main_config.get_config('quick').rrf.low_reward


# --- end to end -----------------------------------------------------------------------------------


# A weight average, so that every phase must pick BCState.average over the last params; a checkpoint per
# phase step, so that a run killed mid-RRF resumes from its last iteration.
SMOKE_FLAGS = ('--config.preset=smoke', '--config.ril.average_decay=0.5', '--config.checkpoint_every=1')


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('smoke')
  run_main(f'--workdir={workdir}', *SMOKE_FLAGS)
  return workdir


def test_smoke_preset_writes_the_report(smoke_run):
  report = (smoke_run / 'report.md').read_text()
  for text in ('## Evaluation', 'RIL', 'RRF per goal (iril)', 'distilled', 'rrf_curve.png', '"preset": "smoke"',
               'Goal states (`goal_values=demos`)'):
    assert text in report
  assert glob.glob(str(smoke_run / '*.png'))
  # The smoke preset asks for one video: the report links it, or says why there is none (no OpenGL).
  videos = report[report.index('## Videos'):report.index('## Files')]
  gifs = glob.glob(str(smoke_run / 'distilled_*.gif'))
  linked = f'[{os.path.basename(gifs[0])}]' in videos if gifs else _compare_module().main.NO_VIDEOS in videos
  assert len(gifs) <= 1 and linked
  for phase in ('ril', 'rrf', 'distill'):
    assert glob.glob(str(smoke_run / 'tensorboard' / phase / 'events.out.tfevents.*'))
  info = json.loads((smoke_run / 'run_info.json').read_text())
  assert info['extra']['eval_seed'] != info['extra']['seed'] or info['extra']['seed'] is None
  written = json.loads((smoke_run / 'results.json').read_text())
  results = written['results']
  assert results['RIL']['episodes'] == 17 and results['RRF per goal (iril)']['episodes'] == 2
  # Leads over RIL on the same resets: the distilled agent's on the 17 goals; RRF's on its own 2 goals, over RIL
  # run on those (checked against experiments/evaluate.py in test_evaluate_runs_every_agent_on_the_same_resets).
  leads = written['success_lead_over_imitation']
  assert leads['distilled'] == evaluation.success_lead(results['distilled'], results['RIL'])
  assert leads['RRF per goal (iril)']['reference_episodes'] == 2 and '## Success lead over RIL' in report
  assert results['nearest neighbour']['episodes'] == 17
  rrf = [json.loads(line) for line in (smoke_run / 'metrics_rrf.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rrf] == [1, 2, 3]
  assert all(0 <= r['step_completion'] <= 4 and r['low/kl'] is not None for r in rrf)
  # The preset's mean-action monitor, per goal and over goals.
  goals = main_config.get_config('smoke').rrf.goals.split(',')
  assert all(0 <= r['deterministic/step_completion'] <= 4 and np.isfinite(r['deterministic/low/reward']) for r in rrf)
  assert all(f'goal/{goal}/deterministic/success' in r for r in rrf for goal in goals)
  # The demos record the expert's version: a resumed generation cannot mix two experts' demos.
  assert read_metadata(str(smoke_run / 'demos'))['config']['expert']['version'] == expert.VERSION


def metrics(workdir) -> dict[str, list[dict]]:
  """Every phase's logged metrics without the wall-clock fields."""
  out = {}
  for phase in ('ril', 'rrf', 'distill'):
    with open(os.path.join(workdir, f'metrics_{phase}.jsonl')) as f:
      out[phase] = [{k: v for k, v in json.loads(line).items() if k != 'time' and not k.startswith('perf/')}
                    for line in f]
  return out


def test_sigkill_and_resume_ends_bit_for_bit_where_an_uninterrupted_run_does(smoke_run, tmp_path):
  """The smoke run again on its demos, killed once RRF has checkpointed its second iteration (of 3), then
  resumed: every logged metric and the results equal the uninterrupted smoke run's."""
  killed = tmp_path / 'killed'
  args = [f'--workdir={killed}', *SMOKE_FLAGS, f'--config.demos.path={smoke_run / "demos"}']
  process = launch(*args)
  deadline = time.time() + 600
  while not os.path.isdir(killed / 'rrf' / 'checkpoints' / '2') and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert process.poll() is None, 'the run ended before it could be killed mid-RRF'
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert not os.path.exists(killed / 'report.md')
  output = run_main(*args)
  assert 'rrf: resuming after step' in output and 'ril: finished earlier (4 steps)' in output
  resumed = metrics(killed)
  assert [r['step'] for r in resumed['rrf']] == [1, 2, 3]
  assert resumed == metrics(smoke_run)
  assert json.loads((killed / 'results.json').read_text())['results'] == \
      json.loads((smoke_run / 'results.json').read_text())['results']


def test_two_processes_train_like_one_and_process_0_writes(smoke_run, tmp_path):
  """The smoke run as two jax.distributed processes of 2 CPU devices each (2 goals x 2 data mesh):
  one report, written by process 0, and the metrics of the one-device run to 0.1 %, float summation
  order."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2'
  processes = [launch(f'--workdir={tmp_path}', *SMOKE_FLAGS, f'--config.demos.path={smoke_run / "demos"}',
                      '--config.eval.videos=0', '--config.mesh.goal=2',
                      f'--coordinator_address=localhost:{port}',
                      '--num_processes=2', f'--process_id={i}', XLA_FLAGS=flags) for i in (0, 1)]
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-3000:]
  assert 'wrote' in outputs[0] and 'wrote' not in outputs[1] and (tmp_path / 'report.md').exists()
  info = json.loads((tmp_path / 'run_info.json').read_text())
  assert info['process_count'] == 2 and info['device_count'] == 4 and info['process_index'] == 0
  two, one = metrics(tmp_path), metrics(smoke_run)
  for phase in ('ril', 'rrf', 'distill'):
    assert [r.keys() for r in two[phase]] == [r.keys() for r in one[phase]]
    for a, b in zip(two[phase], one[phase]):
      for name, value in b.items():
        # The smoke preset damps the Fisher enough for CG to converge (its r.r ~ 1e-10 falls under `abs`), so
        # summation order is not amplified into the NPG steps (experiments/configs/main.py).
        assert a[name] == pytest.approx(value, rel=1e-3, abs=1e-5, nan_ok=True), (phase, a['step'], name)


def test_compare_pools_each_methods_success_leads_over_its_seeds():
  compare = _compare_module()
  agents = {kind: {'success': 0.1, 'step_completion': 1.0} for kind in compare.AGENTS}
  lead = lambda successes, reference: dict(successes=successes, episodes=10, reference_successes=reference,
                                           reference_episodes=10, p=0.5)
  runs = {'a': [{'agents': agents, 'leads': {'rrf': lead(3, 1), 'distilled': lead(1, 1)}},
                {'agents': agents, 'leads': {'rrf': lead(2, 0), 'distilled': lead(0, 0)}}],
          'b': [{'agents': agents, 'leads': {'rrf': lead(2, 0), 'distilled': lead(0, 0)}},
                {'agents': agents, 'leads': None}]}  # a run written before reports had leads
  table = compare.summarize(runs)
  assert table['a']['rrf/lead'] == dict(successes=5, episodes=20, reference_successes=1, reference_episodes=20,
                                        p=evaluation.success_lead_p_value(5, 20, 1, 20))
  assert table['a']['distilled/lead']['successes'] == table['a']['distilled/lead']['reference_successes'] == 1
  assert table['b']['rrf/lead'] is None and table['b']['distilled/lead'] is None
  text = compare.markdown(table)
  assert f"| a | 5 of 20 against 1 of 20, p = {table['a']['rrf/lead']['p']:.2g} |" in text
  assert '| b | not recorded | not recorded |' in text


def test_compare_runs_baselines_through_the_main_job(smoke_run, tmp_path):
  """experiments/compare.py with DAPG-BC (flat BC without relabeling, then DAPG fine-tuning), the
  oracle-segmentation baseline (which reads the generator's element steps) and AW-Opt at the smoke
  preset: the run directories, their columns, and the comparison table over the seed."""
  process = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'compare.py'), f'--workdir={tmp_path}',
                            '--config.preset=smoke', f'--config.demos.path={smoke_run / "demos"}',
                            '--config.eval.videos=0', '--methods=dapg_bc,oracle_rrf,awopt', '--seeds=3'],
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
  run = tmp_path / 'dapg_bc' / 'seed3'
  results = json.loads((run / 'results.json').read_text())
  assert set(results['results']) == {'BC', 'RRF per goal (dapg)', 'distilled', 'nearest neighbour'}
  assert results['config']['seed'] == 3 and results['config']['ril']['method'] == 'gcbc_final'
  assert 'nll_high' not in json.loads((run / 'metrics_ril.jsonl').read_text().splitlines()[0])
  table = json.loads((tmp_path / 'compare.json').read_text())['table']['dapg_bc']
  assert table['distilled/step_completion']['mean'] == results['results']['distilled']['step_completion']
  assert table['rrf/success']['seeds'] == 1 and (tmp_path / 'curves.png').exists()
  assert table['rrf/lead'] == results['success_lead_over_imitation']['RRF per goal (dapg)']  # one seed: itself
  # Fig. 6's curves, sampled and (the smoke preset monitors) mean actions, per RRF iteration.
  curves = json.loads((tmp_path / 'compare.json').read_text())['runs']['dapg_bc'][0]
  logged = [json.loads(line) for line in (run / 'metrics_rrf.jsonl').read_text().splitlines()]
  for name in ('success', 'deterministic/success', 'deterministic/step_completion'):
    assert curves[name] == [r[name] for r in logged]
  assert '| dapg_bc |' in (tmp_path / 'compare.md').read_text()
  oracle = json.loads((tmp_path / 'oracle_rrf' / 'seed3' / 'results.json').read_text())['results']
  assert 'oracle-segmented IL' in oracle and oracle['RRF per goal (dapg)']['episodes'] == 2
  aw = [json.loads(line) for line in (tmp_path / 'awopt' / 'seed3' / 'metrics_rrf.jsonl').read_text().splitlines()]
  assert [r['buffer_size'] for r in aw] == [60, 120, 120] and all(r['low/q_loss'] >= 0 for r in aw)


@pytest.fixture(scope='module')
def kept_run(smoke_run, tmp_path_factory):
  """train_rpl.py on the smoke run's RIL checkpoint with its config and seed, and rrf.keep_best."""
  workdir = tmp_path_factory.mktemp('kept')
  process = run_train_rpl(f'--ril_workdir={smoke_run}', f'--workdir={workdir}', '--config.preset=smoke',
                          '--config.eval.videos=0', '--config.rrf.keep_best=True', '--config.checkpoint_every=1')
  assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
  return workdir


def test_train_rpl_starts_from_the_ril_checkpoint_and_keeps_the_best_monitored_agents(smoke_run, kept_run):
  """No RIL training, the RRF phase retraces the smoke run's exactly (adding the best/* metrics), and
  each goal's RRF agent, in the report and from the run directory, is the kept parameters: those of
  the iteration whose logged monitor scores rank first. The run's ril.* settings are the RIL run's
  (SMOKE_FLAGS' weight average, not given to train_rpl.py)."""
  assert not os.path.exists(kept_run / 'metrics_ril.jsonl') and (kept_run / 'report.md').exists()
  assert json.loads((kept_run / 'run_info.json').read_text())['extra']['config']['ril'] == {
      **json.loads((smoke_run / 'run_info.json').read_text())['extra']['config']['ril'], 'from_workdir': str(smoke_run)}
  strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != 'time' and not k.startswith('perf/')}
                        for line in path.read_text().splitlines()]
  logged, smoke = strip(kept_run / 'metrics_rrf.jsonl'), strip(smoke_run / 'metrics_rrf.jsonl')
  assert [{k: v for k, v in row.items() if 'best/' not in k} for row in logged] == smoke
  goals = main_config.get_config('smoke').rrf.goals.split(',')
  kept = json.loads((kept_run / 'results.json').read_text())['rrf_kept']
  assert list(kept) == goals and 'RRF agents (`rrf.keep_best`)' in (kept_run / 'report.md').read_text()
  agent, params, *_ = phases.load_policy(str(kept_run), 'rrf')
  configs = phases.build(config_dict.ConfigDict(read_config(str(kept_run / 'rrf' / 'checkpoints'))))
  ril_state = load_state(str(smoke_run / 'ril' / 'checkpoints'), phases._ril_target(agent, configs.bc))
  for g, goal in enumerate(goals):
    scores = [(row[f'goal/{goal}/deterministic/success'], row[f'goal/{goal}/deterministic/step_completion'])
              for row in logged]
    want = max(range(len(scores)), key=lambda i: (*scores[i], -i))
    assert kept[goal]['updates'] == want == logged[-1][f'goal/{goal}/best/iteration']
    assert kept[goal]['monitored_success'] == scores[want][0]
    # The parameters after `want` updates: the RIL agent's, or a checkpoint's.
    saved = ril_state.average if not want else jax.tree.map(lambda x: x[g], load_state(
        str(kept_run / 'rrf' / 'checkpoints'), phases._tuned_target(agent, configs, ril_state), step=want).params)
    assert all(np.array_equal(x[g], y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(saved))), goal


def test_evaluate_runs_every_agent_on_the_same_resets(smoke_run, kept_run):
  """experiments/evaluate.py on the keep_best run: its kept RRF agents on the run's evaluation seed
  reproduce the report's numbers; RIL and the last RRF parameters score as the per-goal evaluator
  scores them from the checkpoints; the p-values are the Fisher test's; bad requests fail clearly."""
  script = os.path.join(REPO, 'experiments', 'evaluate.py')
  evaluate = lambda *args: subprocess.run([sys.executable, script, f'--workdir={kept_run}', *args], cwd=REPO,
                                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                                          timeout=600)
  process = evaluate('--agents=ril,rrf,rrf_last', '--episodes=1')
  assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
  config = read_config(str(kept_run / 'rrf' / 'checkpoints'))
  seed, steps = config['eval']['seed'], config['eval']['episode_steps']
  written = sorted((kept_run / 'evaluation').iterdir())
  assert [path.suffix for path in written] == ['.json', '.md'] and f'seed{seed}_1x{steps}_2goals' in written[0].name
  record = json.loads(written[0].read_text())
  results = record['results']
  goals = tuple(main_config.get_config('smoke').rrf.goals.split(','))
  assert tuple(record['goals']) == goals
  report = json.loads((kept_run / 'results.json').read_text())
  assert results['rrf'] == report['results']['RRF per goal (iril)']
  # The report's RRF lead is over RIL run on the RRF goals, from the same resets as here.
  assert report['success_lead_over_imitation']['RRF per goal (iril)'] == evaluation.success_lead(results['rrf'],
                                                                                                 results['ril'])
  agent, _, normalizers, _, goal_values = phases.load_policy(str(kept_run), 'ril')
  configs = phases.build(config_dict.ConfigDict(config))
  ril_state = load_state(str(smoke_run / 'ril' / 'checkpoints'), phases._ril_target(agent, configs.bc))
  last = load_state(str(kept_run / 'rrf' / 'checkpoints'), phases._tuned_target(agent, configs, ril_state)).params
  env = KitchenEnv(KitchenConfig(backend='cpu', horizon=steps))
  evaluator = evaluation.make_evaluator(env, agent, steps, values=goal_values)
  copies = jax.tree.map(lambda x: np.stack([x] * len(goals)), ril_state.average)
  for name, params in (('ril', copies), ('rrf_last', last)):
    assert results[name] == evaluation.summarize(evaluator(params, normalizers, jax.random.key(seed), goals, 1,
                                                           per_goal=True)), name
  count = lambda name: round(results[name]['success'] * len(goals))
  assert record['success_lead_over'] == 'ril' and record['success_lead_p'] == {
      name: evaluation.success_lead_p_value(count(name), len(goals), count('ril'), len(goals))
      for name in ('rrf', 'rrf_last')}
  assert '| microwave-kettle-topknob-hinge |' in written[1].read_text()
  for args, message in ((('--agents=rrf', '--goals=microwave-kettle-switch-slide'), 'the RRF agents cover'),
                        (('--agents=ril,ppo',), '--agents must name some of'),
                        (('--goals=microwave-kettle-oven',), 'oven'),
                        (('--agents=ril,distill', '--ensemble'), '--ensemble is for the runs of a train_ril.py')):
    process = evaluate(*args)
    assert process.returncode != 0 and message in process.stderr, process.stderr[-2000:]


def test_train_rpl_from_a_ril_run_on_a_device_mesh(smoke_run, tmp_path):
  """A RIL state loaded from another run goes onto the mesh as a trained one would: RRF over a
  2-goal mesh of 2 CPU devices, distillation and evaluation run, and the RIL agent evaluates as in
  the run it came from."""
  flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2'
  process = run_train_rpl(f'--ril_workdir={smoke_run}', f'--workdir={tmp_path}', '--config.preset=smoke',
                          '--config.eval.videos=0', '--config.mesh.goal=2', '--config.rrf.iterations=1',
                          XLA_FLAGS=flags)
  assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
  assert json.loads((tmp_path / 'run_info.json').read_text())['device_count'] == 2
  results, source = (json.loads((run / 'results.json').read_text())['results'] for run in (tmp_path, smoke_run))
  assert results['RIL'] == source['RIL']


def test_starting_from_a_ril_run_that_differs_or_has_not_finished_fails(smoke_run, tmp_path):
  """The normalizers of a RIL run trained on absolute goals have the same shapes as relative ones, and
  the horizon is no parameter at all: only the configs can tell, and a --config.ril.* that contradicts
  the RIL run is refused before anything trains. So is a RIL run stopped before its last step."""
  process = run_train_rpl(f'--ril_workdir={smoke_run}', f'--workdir={tmp_path / "run"}', '--config.preset=smoke',
                          '--config.ril.relative_goals=True', '--config.ril.horizon=10')
  assert process.returncode != 0
  assert 'ril.horizon=30 there, 10 here; ril.relative_goals=False there, True here' in process.stderr, \
      process.stderr[-2000:]
  unfinished = tmp_path / 'unfinished'
  shutil.copytree(smoke_run / 'ril', unfinished / 'ril')
  shutil.rmtree(unfinished / 'ril' / 'checkpoints' / '4')  # as if killed before its last step (checkpoint_every=1)
  process = run_train_rpl(f'--ril_workdir={unfinished}', f'--workdir={tmp_path / "run"}', '--config.preset=smoke',
                          f'--config.demos.path={smoke_run / "demos"}')
  assert process.returncode != 0
  assert f'{unfinished} stopped its RIL phase at step 3 of 4' in process.stderr, process.stderr[-2000:]
  assert not (tmp_path / 'run' / 'rrf').exists()
  for step in ('0', '1', '2', '3'):
    shutil.rmtree(unfinished / 'ril' / 'checkpoints' / step, ignore_errors=True)  # only config.json is left
  with pytest.raises(ValueError, match='stopped its RIL phase before its first RIL checkpoint'):
    phases.check_source_ril(str(unfinished), read_config(str(smoke_run / 'ril' / 'checkpoints')))


def test_low_level_probe_replays_held_out_demos_from_their_own_resets(smoke_run, tmp_path):
  """experiments/probe_low_level.py on the smoke run's two demos: the demo's own actions, run from its
  recorded reset key toward its recorded elements in the probe's harness, complete all four. With
  --in_sample both demos train; the per-element counts add up to the episode's."""
  for flags in ([], ['--in_sample', '--track_progress']):
    out = tmp_path / 'probe.json'
    process = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'probe_low_level.py'),
                              f'--demos={smoke_run / "demos"}', '--held_out=1', '--updates=100', '--window=5',
                              '--episode_steps=700', f'--out={out}', *flags], cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['train_demos'] == (2 if flags else 1) and result['updates'] == 100
    assert result['replayed_elements_per_episode'] == 4.0
    assert 0.0 <= result['elements_per_episode'] <= 4.0 and 0.0 <= result['held_out_arm_action_error'] < float('inf')
    in_plan, completed = result['in_plan_per_element'], result['completed_per_element']
    assert sum(in_plan.values()) == 4 and sum(completed.values()) == result['elements_per_episode']
    assert all(completed[e] <= in_plan[e] for e in in_plan)


def test_distillation_probe_redoes_the_runs_distillation(smoke_run, tmp_path):
  """experiments/probe_distill.py on the smoke run: its first student for all goals is the run's distilled
  agent redone (same data, keys and fit); every agent runs on the same resets of the RRF goals, and each
  kind's pooled lead adds up its repeats' episodes against RIL's."""
  out = tmp_path / 'probe'
  process = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'probe_distill.py'),
                            f'--workdir={smoke_run}', '--episodes=1', '--repeats=2', f'--out={out}'], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  record = json.loads((tmp_path / 'probe.json').read_text())
  assert record['max_abs_difference_from_run'] < 1e-5
  kinds = ('one student for all goals', 'one student per goal')
  assert list(record['results']) == ['RIL', 'per-goal agents'] + [f'{k}, repeat {r}' for r in (0, 1) for k in kinds]
  assert all(summary['episodes'] == 2 for summary in record['results'].values())  # the smoke preset's 2 RRF goals
  assert record['distill']['low_samples_per_goal'] == 30  # 1 episode of 30 steps per goal
  leads = record['success_lead_over_ril']
  assert leads['one student per goal, repeat 1'] == evaluation.success_lead(
      record['results']['one student per goal, repeat 1'], record['results']['RIL'])
  ril = record['results']['RIL']
  for kind in kinds:  # both repeats' episodes against RIL's once
    runs = [record['results'][f'{kind}, repeat {r}'] for r in (0, 1)]
    assert record['pooled_lead_over_ril'][kind] == evaluation.lead_from_counts(
        sum(map(evaluation.success_count, runs)), 4, evaluation.success_count(ril), 2)
  text = (tmp_path / 'probe.md').read_text()
  assert '- one student per goal, repeat 1: ' in text and '## Pooled over the 2 repeats' in text
  missing = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'probe_distill.py'),
                            f'--workdir={tmp_path}'], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=300)
  assert missing.returncode != 0 and 'needs finished ril, rrf and distill phases' in missing.stderr


def test_train_ril_writes_table_1_and_refuses_other_methods(smoke_run, tmp_path):
  """experiments/train_ril.py on the smoke run's demos: every Table 1 method trains and is evaluated,
  and the tables list them beside the paper's numbers; each run logs its curve and checkpoints its state;
  rerunning resumes an interrupted run to the same numbers, reads the evaluated ones back and refuses
  runs made with other settings; evaluate.py and probe_elements.py take its runs; a method outside
  Table 1, or no method, no episodes, a repeated goal or a negative video count fails before training."""
  def train_ril(workdir, *flags):
    return subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'train_ril.py'), f'--workdir={workdir}',
                           f'--config.demos={smoke_run / "demos"}', '--config.seeds=1', '--config.train_steps=2',
                           '--config.updates_per_step=2', '--config.window_low=5', '--config.window_high=20',
                           '--config.horizon=5', '--config.eval_episodes=1', '--config.episode_steps=10',
                           '--config.goals=microwave-kettle-topknob-hinge', '--config.backend=cpu',
                           '--config.corrective_noise=0.05', '--config.subgoal_noise=0.2',
                           '--config.subgoal_finger_noise=0.01', '--config.average_decay=0.5',
                           '--config.checkpoint_every=1', *flags],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900)

  process = train_ril(tmp_path / 'table')
  assert process.returncode == 0, process.stderr[-3000:]
  with open(tmp_path / 'table' / 'table.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['method'] for row in rows] == ['RIL', 'GCBC with relabeling', 'GCBC without relabeling']
  results = json.loads((tmp_path / 'table' / 'results.json').read_text())
  assert all(results['configs'][m]['corrective_noise'] == 0.05 and results['configs'][m]['subgoal_noise'] == 0.2
             and results['configs'][m]['subgoal_finger_noise'] == 0.01 and results['configs'][m]['average_decay'] == 0.5
             for m in ('ril', 'gcbc', 'gcbc_final'))
  # Successes pooled over the episodes, and the Fisher p-value of RIL's lead beside each baseline.
  runs = [results['results'][m][0] for m in ('ril', 'gcbc', 'gcbc_final')]
  successes = [round(r['success'] * r['episodes']) for r in runs]
  assert [row['successes'] for row in rows] == [f'{k} / 1' for k in successes] and rows[0]['p_ril_succeeds_more'] == '-'
  for row, k in zip(rows[1:], successes[1:]):
    expected = evaluation.success_lead_p_value(successes[0], 1, k, 1)
    assert float(row['p_ril_succeeds_more']) == pytest.approx(expected, rel=1e-2)
  demo_values = evaluation.goal_values('demos', load_padded(str(smoke_run / 'demos')))
  assert {e: tuple(v) for e, v in results['goal_values'].items()} == demo_values != evaluation.goal_values('task')
  assert (tmp_path / 'table' / 'success.png').stat().st_size > 0
  # Each run's curve, in JSONL and TensorBoard, and its checkpoints (every call, the last two kept).
  logged = [json.loads(line) for line in (tmp_path / 'table' / 'metrics_ril_seed0.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged] == [1, 2] and all(np.isfinite(r['nll_low']) for r in logged)
  assert list((tmp_path / 'table' / 'tensorboard' / 'ril_seed0').glob('events.out.tfevents.*'))
  assert latest_step(str(tmp_path / 'table' / 'gcbc_final_seed0' / 'checkpoints')) == 2
  # Rerun after a crash in the last run's second call: it resumes after its first call, the others are
  # read back.
  shutil.rmtree(tmp_path / 'table' / 'gcbc_final_seed0' / 'checkpoints' / '2')
  (tmp_path / 'table' / 'gcbc_final_seed0' / 'summary.json').unlink()
  # A run saved before a setting existed ran as its ADDED_SETTINGS value: still read back.
  meta = tmp_path / 'table' / 'ril_seed0' / 'checkpoints' / '2' / 'meta' / 'metadata'
  saved = json.loads(meta.read_text())
  assert saved['config'].pop('object_goals') is False
  meta.write_text(json.dumps(saved))
  process = train_ril(tmp_path / 'table')
  assert process.returncode == 0, process.stderr[-3000:]
  assert [m for m in ('ril', 'gcbc', 'gcbc_final') if f'{m} seed 0: evaluated by an earlier run' in process.stdout] == \
      ['ril', 'gcbc']
  assert 'gcbc_final_seed0: resuming after step 1 of 2' in process.stdout
  again = json.loads((tmp_path / 'table' / 'results.json').read_text())['results']
  assert again['ril'] == results['results']['ril'] and again['gcbc'] == results['results']['gcbc']
  timeless = lambda run: {k: v for k, v in run.items() if not k.endswith('_seconds')}
  assert timeless(again['gcbc_final'][0]) == timeless(results['results']['gcbc_final'][0])  # retrained, same seed
  # Each element in isolation (experiments/probe_elements.py): RIL's own levels, and the flat GCBC policy
  # on the demo's subgoals. The replayed prefixes leave exactly the demo's first elements complete.
  element_steps = read_element_steps(str(smoke_run / 'demos'))
  for method, subgoals, suffix in (('ril', 'agent', ''), ('gcbc', 'demo', '_demo_subgoals')):
    probe = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'probe_elements.py'),
                            f'--run={tmp_path / "table"}', f'--method={method}', f'--demos={smoke_run / "demos"}',
                            '--count=2', '--budget=5', f'--subgoals={subgoals}'], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900)
    assert probe.returncode == 0, probe.stderr[-3000:]
    probed = json.loads((tmp_path / 'table' / f'probe_{method}_seed0{suffix}.json').read_text())
    rows = probed['rows']
    assert [(r['demo'], r['position']) for r in rows] == [(d, j) for d in range(2) for j in range(4)]
    assert [r['t0'] for r in rows] == [0 if j == 0 else int(element_steps[d, j - 1])
                                       for d in range(2) for j in range(4)]
    assert probed['prefix_exact'] == 1.0 and probed['done'] == np.mean([r['done'] for r in rows])
    assert all(r['steps'] is None or 0 < r['steps'] <= 5 for r in rows)
    assert sum(group['n'] for group in probed['by_element'].values()) == 8
  # experiments/evaluate.py on the table: the named runs on the same resets, by default the key train_ril
  # used for seed 0 and the table's episode length; a run the table lacks, or an RRF step, is refused.
  evaluate = lambda *args: subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'evaluate.py'),
                                           f'--workdir={tmp_path / "table"}', '--episodes=2', *args], cwd=REPO,
                                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                                          timeout=600)
  process = evaluate('--agents=gcbc_seed0,ril_seed0')
  assert process.returncode == 0, process.stderr[-3000:]
  written = sorted((tmp_path / 'table' / 'evaluation').iterdir())
  name = (f'cpu_seed{phases.TABLE_EVAL_SEED}_2x10_1goals-{zlib.crc32(b"microwave-kettle-topknob-hinge"):08x}_'
          'gcbc_seed0+ril_seed0')
  assert [path.name for path in written] == [name + '.json', name + '.md']
  record = json.loads(written[0].read_text())
  assert list(record['results']) == ['gcbc_seed0', 'ril_seed0'] and record['success_lead_over'] == 'gcbc_seed0'
  assert all(r['episodes'] == 2 and r['nan_steps'] == 0 for r in record['results'].values())
  assert list(record['success_lead_p']) == ['ril_seed0'] and '## Success lead over gcbc_seed0' in written[1].read_text()
  for args, message in ((('--agents=ril_seed1',), "some of ['ril_seed0', 'gcbc_seed0', 'gcbc_final_seed0']"),
                        (('--rrf_step=2',), '--rrf_step is for a main-job run'),
                        (('--agents=ril_seed0', '--ensemble'), 'two or more runs of one method'),
                        (('--agents=gcbc_seed0,ril_seed0', '--ensemble'), 'two or more runs of one method')):
    refused = evaluate(*args)
    assert refused.returncode != 0 and message in refused.stderr, (args, refused.stderr[-2000:])
  # A second RIL and GCBC seed, and each method's two as one ensemble agent beside them on the same resets
  # (tests/test_networks.py checks the ensemble's actions against its members'); a method with one run
  # named gets none.
  process = train_ril(tmp_path / 'table', '--config.methods=ril,gcbc', '--config.seeds=2')
  assert process.returncode == 0, process.stderr[-3000:]
  process = evaluate('--agents=ril_seed0,ril_seed1,gcbc_seed0,gcbc_seed1', '--ensemble',
                     '--out=' + str(tmp_path / 'ensemble'))
  assert process.returncode == 0, process.stderr[-3000:]
  record = json.loads((tmp_path / 'ensemble.json').read_text())
  assert list(record['results']) == ['ril_seed0', 'ril_seed1', 'gcbc_seed0', 'gcbc_seed1', 'ril_ensemble',
                                     'gcbc_ensemble']
  assert all(r['episodes'] == 2 and r['nan_steps'] == 0 for r in record['results'].values())
  assert list(record['success_lead_p']) == ['ril_seed1', 'gcbc_seed0', 'gcbc_seed1', 'ril_ensemble', 'gcbc_ensemble']
  for method in ('ril', 'gcbc'):
    members = [phases.load_table_run(str(tmp_path / 'table'), method, seed)[0] for seed in (0, 1)]
    assert not np.array_equal(*(jax.tree.leaves(m.params)[0] for m in members))  # two different agents
  process = evaluate('--agents=ril_seed0,ril_seed1,gcbc_seed0', '--ensemble', '--out=' + str(tmp_path / 'one_gcbc'))
  assert process.returncode == 0, process.stderr[-3000:]
  assert list(json.loads((tmp_path / 'one_gcbc.json').read_text())['results']) == ['ril_seed0', 'ril_seed1',
                                                                                  'gcbc_seed0', 'ril_ensemble']
  assert 'gcbc has one run in --agents, so no ensemble of it' in process.stdout
  # experiments/distill_ensemble.py: the two RIL seeds' ensemble distilled into one agent by DAgger, as a run
  # directory that evaluate.py and train_rpl.py take (tests/test_distill.py checks dagger itself).
  distil = lambda *args: subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'distill_ensemble.py'),
                                         f'--table={tmp_path / "table"}', f'--out={tmp_path / "student"}',
                                         '--episodes=1', '--updates=5', '--eval_episodes=1', *args], cwd=REPO,
                                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                                        timeout=600)
  for args, message in ((('--seeds=0',), 'two or more distinct runs'), (('--seeds=0,2',), 'two or more distinct runs'),
                        (('--start_seed=2',), 'must be one of --seeds'), (('--method=oracle',), "no 'oracle' runs")):
    refused = distil(*args)
    assert refused.returncode != 0 and message in refused.stderr, (args, refused.stderr[-2000:])
  assert not (tmp_path / 'student').exists()
  process = distil('--rounds=1')
  assert process.returncode == 0, process.stderr[-3000:]
  record = json.loads((tmp_path / 'student' / 'distill_ensemble.json').read_text())
  assert list(record['results']) == ['ril_seed0', 'ril_ensemble', 'student_fit0', 'student_fit1']
  assert [(h['episodes_of'], h['samples']) for h in record['history']] == [('teacher', 10), ('student', 20)]
  # On train_ril's own resets for seed 0 (key 1000, one episode), seed 0 scores what the table recorded.
  table_run = results['results']['ril'][0]
  assert all(record['results']['ril_seed0'][k] == table_run[k] for k in ('success', 'step_completion', 'per_goal'))
  student = phases.load_policy(str(tmp_path / 'student'), 'ril')
  start = phases.load_table_run(str(tmp_path / 'table'), 'ril', 0)[0]
  assert student.goals == start.goals and student.goal_values == start.goal_values
  assert not np.array_equal(jax.tree.leaves(student.params)[0], jax.tree.leaves(start.params)[0])
  process = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'evaluate.py'),
                            f'--workdir={tmp_path / "student"}', '--agents=ril', '--episodes=1',
                            f'--out={tmp_path / "student_eval"}'], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  assert json.loads((tmp_path / 'student_eval.json').read_text())['results']['ril'] == record['results']['student_fit1']
  process = run_train_rpl(f'--ril_workdir={tmp_path / "student"}', f'--workdir={tmp_path / "student_rpl"}',
                          '--config.preset=smoke', '--config.eval.videos=0', '--config.rrf.iterations=1',
                          '--config.backend=cpu')
  assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
  run = read_config(str(tmp_path / 'student_rpl' / 'rrf' / 'checkpoints'))
  assert run['demos']['path'] == str(smoke_run / 'demos') and run['ril']['window_high'] == 20
  refused = distil()
  assert refused.returncode != 0 and 'already exists' in refused.stderr
  # A table whose demos are gone is refused before anything runs: train_rpl.py's RRF would need them.
  shutil.copytree(tmp_path / 'table', tmp_path / 'moved')
  moved = json.loads((tmp_path / 'moved' / 'results.json').read_text())
  moved['config']['demos'] = str(tmp_path / 'gone')
  (tmp_path / 'moved' / 'results.json').write_text(json.dumps(moved))
  refused = distil(f'--table={tmp_path / "moved"}', f'--out={tmp_path / "student_moved"}')
  assert refused.returncode != 0 and 'no dataset metadata' in refused.stderr, refused.stderr[-2000:]
  # The same workdir with another setting would mix two experiments in one table: refused.
  refused = train_ril(tmp_path / 'table', '--config.corrective_noise=0.1')
  assert refused.returncode != 0 and 'corrective_noise=0.05 there, 0.1 here' in refused.stderr, refused.stderr[-2000:]
  refused = train_ril(tmp_path / 'oracle', '--config.methods=ril,oracle')
  assert refused.returncode != 0 and 'not in Table 1' in refused.stderr and 'compare.py' in refused.stderr
  assert not (tmp_path / 'oracle').exists()
  twice = 'microwave-kettle-topknob-hinge,' * 2
  for flag, message in (('--config.methods=,', 'must name a method'), ('--config.videos=-1', 'videos >= 0'),
                        ('--config.eval_episodes=0', 'episodes must be >= 1'), (f'--config.goals={twice}', 'distinct goals')):
    refused = train_ril(tmp_path / 'bad', flag)
    assert refused.returncode != 0 and message in refused.stderr, (flag, refused.stderr[-2000:])
    assert not (tmp_path / 'bad').exists()


def test_policies_load_from_the_run_directory_alone(smoke_run):
  """Re-evaluating the loaded agents with the run's evaluation seed reproduces its report numbers."""
  results = json.loads((smoke_run / 'results.json').read_text())['results']
  config = json.loads((smoke_run / 'rrf' / 'checkpoints' / 'config.json').read_text())
  env = KitchenEnv(KitchenConfig(backend='cpu', horizon=config['eval']['episode_steps']))
  key = jax.random.key(config['eval']['seed'])
  for phase, name in (('distill', 'distilled'), ('rrf', 'RRF per goal (iril)'), ('ril', 'RIL')):
    agent, params, normalizers, goals, goal_values = phases.load_policy(str(smoke_run), phase)
    assert goal_values == evaluation.goal_values('demos', load_padded(str(smoke_run / 'demos')))
    evaluate = evaluation.make_evaluator(env, agent, config['eval']['episode_steps'], values=goal_values)
    summary = evaluation.summarize(evaluate(params, normalizers, key, goals, config['eval']['episodes'],
                                            per_goal=phase == 'rrf'))
    assert summary == results[name]
    if phase == 'ril':  # the agent is the weight average, not the last parameters
      saved = load_state(str(smoke_run / 'ril' / 'checkpoints'),
                         phases._ril_target(agent, phases.build(config_dict.ConfigDict(config)).bc))
      same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      assert same(params, saved.average) and not same(params, saved.params)
  with pytest.raises(ValueError, match='phase must be'):
    phases.load_policy(str(smoke_run), 'eval')
