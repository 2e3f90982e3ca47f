"""The resumable training phases of a run directory: RIL, per-goal RRF and distillation.

`build` turns a launcher's ml_collections config into the library's validated configs, failing with
a clear message before anything compiles. Each phase is a host loop over its compiled step
(`run_phase`) with orbax checkpoints in <workdir>/<phase>/checkpoints (the run config beside them),
metrics in <workdir>/metrics_<phase>.jsonl and tensorboard/<phase>/, and a progress bar. Running a
phase again resumes from its newest usable checkpoint (a finished phase restores its final state and
trains no more). The RNG key, the iteration counters, the IRIL buffers and the optimiser states are
all in the checkpointed state, and the samplers draw minibatches from that key (the key is the data
cursor), so on a CPU a resumed run ends bit for bit where an uninterrupted one does.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import config_dict

from envs.kitchen import ACTION_DIM, tasks
from envs.kitchen import physics as kitchen_physics
from rpl_jax import awopt, distill, evaluation, networks, npg, parallel, relabel, rollout, rrf, train
from rpl_jax.checkpoint import Checkpointer, latest_step, load_state, read_config
from rpl_jax.data.demos import PaddedDemos
from rpl_jax.files import write_atomic
from rpl_jax.logs import MetricsLogger, Progress
from rpl_jax.relabel import RelabelConfig


@dataclasses.dataclass(frozen=True)
class RunConfigs:
  bc: train.BCConfig
  rrf: rrf.RRFConfig | awopt.AWOptConfig  # the fine-tuning phase: RRF's NPG variants, or AW-Opt
  distill: distill.DistillConfig
  rrf_goals: tuple[str, ...]
  eval_goals: tuple[str, ...]
  goal_values: str  # evaluation.GOAL_SOURCES: where goal states put their elements
  mesh: Mesh  # RIL splits its minibatches over all devices; RRF its goals and envs over the goal and data axes


def goal_list(goals: str) -> tuple[str, ...]:
  """'all' (the 17 compound goals) or comma-separated goal names, each validated."""
  names = tasks.COMPOUND_GOALS if goals == 'all' else tuple(g.strip() for g in goals.split(',') if g.strip())
  return evaluation.check_goals(names)


def _input_forms(config: config_dict.ConfigDict) -> dict[str, bool]:
  """The imitation's goal and subgoal forms; runs saved before the keys existed used absolute, whole ones."""
  return {key: config.ril.get(key, False) for key in ('relative_goals', 'relative_subgoals', 'object_goals')}


def _agent_settings(config: config_dict.ConfigDict) -> dict[str, Any]:
  """The imitation settings that decide what a trained agent does (its method, windows, horizon and
  input forms) without changing its parameters' shapes, so that only the configs can tell them apart."""
  return {**{key: config.ril[key] for key in ('method', 'window_low', 'window_high', 'horizon')},
          **_input_forms(config)}


def check_source_ril(from_workdir: str, run_config: dict) -> None:
  """A run that starts from another run directory's RIL agent (ril.from_workdir) must share its
  _agent_settings, and that run's RIL phase must have finished; ValueError names what differs."""
  source = os.path.join(from_workdir, 'ril', 'checkpoints')
  trained = config_dict.ConfigDict(read_config(source))
  ours = _agent_settings(config_dict.ConfigDict(run_config))
  differ = [f'ril.{key}={value} there, {ours[key]} here' for key, value in _agent_settings(trained).items()
            if value != ours[key]]
  if differ:
    raise ValueError(f'{from_workdir} trained its RIL agent with other settings ({"; ".join(differ)}): set them '
                     'to match.')
  done, total = latest_step(source), trained.ril.train_steps
  if done != total:
    where = 'before its first RIL checkpoint' if done is None else f'at step {done} of {total}'
    raise ValueError(f'{from_workdir} stopped its RIL phase {where}: rerun its command to finish it first.')


def build(config: config_dict.ConfigDict, loading: bool = False) -> RunConfigs:
  """The validated configs of a run; ValueError names what is wrong. `loading`: for restoring a saved
  run's agents (load_policy), which needs neither its env backend nor its device mesh on this host:
  those are not checked, and the mesh is this host's first device."""
  windows = RelabelConfig(config.ril.window_low, config.ril.window_high, config.ril.horizon)
  bc = train.BCConfig(method=config.ril.method, relabel=windows, policy=networks.PolicyConfig(hidden=tuple(config.ril.hidden)),
                      batch_size=config.ril.batch_size, updates_per_step=config.ril.updates_per_step,
                      learning_rate=config.ril.learning_rate, **_input_forms(config),
                      # 0 in runs saved before the keys existed
                      corrective_noise=config.ril.get('corrective_noise', 0.0),
                      subgoal_noise=config.ril.get('subgoal_noise', 0.0),
                      subgoal_finger_noise=config.ril.get('subgoal_finger_noise', 0.0),
                      average_decay=config.ril.get('average_decay', 0.0))
  r = config.rrf
  # absent in runs saved before the keys existed
  monitor = dict(monitor_episodes=r.get('monitor_episodes', 0), keep_best=r.get('keep_best', False))
  if r.variant == 'awopt':
    if r.get('exploration_log_std') is not None:
      raise ValueError('rrf.exploration_log_std applies to the NPG variants; awopt keeps the imitation\'s noise.')
    if r.finetune_high or not r.finetune_low or r.from_scratch.strip():
      raise ValueError('rrf.finetune_high, finetune_low and from_scratch apply to the NPG variants; awopt fine-tunes '
                       'its one flat actor from the imitation.')
    a = config.awopt
    fine_tuning = awopt.AWOptConfig(
        pretrain=config.ril.method, num_envs=r.num_envs, episode_steps=r.episode_steps, updates=a.updates,
        batch_size=a.batch_size, demo_fraction=a.demo_fraction, buffer_transitions=a.buffer_transitions,
        gamma=a.gamma, beta=a.beta, max_weight=a.max_weight, q_hidden=tuple(a.q_hidden),
        q_learning_rate=a.q_learning_rate, actor_learning_rate=a.actor_learning_rate, polyak=a.polyak, **monitor)
  else:
    fine_tuning = rrf.RRFConfig(
        variant=r.variant, pretrain=config.ril.method, num_envs=r.num_envs, episode_steps=r.episode_steps,
        low_reward=r.low_reward, finetune_high=r.finetune_high, finetune_low=r.finetune_low,
        from_scratch=tuple(level.strip() for level in r.from_scratch.split(',') if level.strip()),
        exploration_log_std=r.get('exploration_log_std'),  # absent in runs saved before the key existed
        update=npg.NPGConfig(step_size=r.step_size, damping=r.get('damping', npg.NPGConfig.damping)),
        value_hidden=tuple(r.value_hidden), value_epochs=r.value_epochs,
        value_batch_size=r.value_batch_size, relabel=windows, dapg_lambda0=r.dapg_lambda0,
        dapg_lambda1=r.dapg_lambda1, bc_batch_size=r.bc_batch_size, buffer_episodes=r.buffer_episodes, **monitor)
    rrf.check_exploration(fine_tuning, bc.policy.min_log_std)
  d = config.distill
  distillation = distill.DistillConfig(d.episodes_per_goal, d.updates, d.batch_size, d.learning_rate,
                                       d.get('decay', False))  # absent in runs saved before the key existed
  for name, value in (('ril.train_steps', config.ril.train_steps), ('rrf.iterations', r.iterations),
                      ('checkpoint_every', config.checkpoint_every), ('eval.episodes', config.eval.episodes),
                      ('eval.episode_steps', config.eval.episode_steps)):
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}.')
  if not loading:
    check_backend(config.backend)
  goal_values = config.get('goal_values', 'task')  # runs saved before the key used the task's values
  if goal_values not in evaluation.GOAL_SOURCES:
    raise ValueError(f'goal_values must be one of {evaluation.GOAL_SOURCES}, got {goal_values!r}.')
  rrf_goals = goal_list(r.goals)
  mesh = (parallel.make_mesh(devices=jax.devices()[:1]) if loading
          else parallel.make_mesh(data=config.mesh.data, goal=config.mesh.goal))
  parallel.check_divisible(mesh, parallel.AXES, **{'ril.batch_size': config.ril.batch_size})
  parallel.check_divisible(mesh, (parallel.GOAL,), **{'the number of rrf.goals': len(rrf_goals)})
  parallel.check_divisible(mesh, (parallel.DATA,), **{'rrf.num_envs': r.num_envs, 'rrf.bc_batch_size': r.bc_batch_size,
                                                      'rrf.monitor_episodes': monitor['monitor_episodes']})
  return RunConfigs(bc, fine_tuning, distillation, rrf_goals, goal_list(config.eval.goals), goal_values, mesh)


def ril_settings(bc: train.BCConfig, train_steps: int) -> dict[str, Any]:
  """The main job's ril.* settings that `build` turns back into `bc`: for a run directory holding an agent
  trained outside the main job (experiments/distill_ensemble.py), which train_rpl.py then fine-tunes."""
  return {'method': bc.method, 'window_low': bc.relabel.window_low, 'window_high': bc.relabel.window_high,
          'horizon': bc.relabel.horizon, 'hidden': list(bc.policy.hidden), 'batch_size': bc.batch_size,
          'updates_per_step': bc.updates_per_step, 'train_steps': train_steps, 'learning_rate': bc.learning_rate,
          'relative_goals': bc.relative_goals, 'relative_subgoals': bc.relative_subgoals,
          'object_goals': bc.object_goals, 'corrective_noise': bc.corrective_noise, 'subgoal_noise': bc.subgoal_noise,
          'subgoal_finger_noise': bc.subgoal_finger_noise, 'average_decay': bc.average_decay}


def check_backend(backend: str) -> None:
  """MJX needs an accelerator here: batched MJX on the CPU runs at a few physics steps per second
  (DESIGN.md section 3), so a CPU host gets the C MuJoCo backend."""
  if backend not in ('auto',) + kitchen_physics.BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; choose from {('auto',) + kitchen_physics.BACKENDS}.")
  if backend == 'mjx' and jax.default_backend() == 'cpu':
    raise ValueError("backend 'mjx' is unavailable on this CPU-only host (batched MJX on the CPU is impractically "
                     "slow); use backend='cpu' or 'auto'.")


def to_json(config: config_dict.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json())


# --- the phase loop -------------------------------------------------------------------------------


def run_phase(workdir: str, phase: str, run_config: dict[str, Any], state, step: Callable, total: int,
              checkpoint_every: int, max_to_keep: int, scalars: Callable[[Any], dict[str, float]],
              env_steps_per_call: int = 0):
  """Calls `state, metrics = step(state)` until `total` calls are done, resuming after the newest
  usable checkpoint of `phase`. Logs `scalars(metrics)` per call (plus 'perf/*' wall-clock rates,
  the only values that differ between runs) and checkpoints every `checkpoint_every` calls and at
  the end. Returns the final state."""
  with Checkpointer(f'{workdir}/{phase}/checkpoints', run_config, max_to_keep) as checkpoints:
    done, restored = checkpoints.restore_latest_usable(state)
    done, state = (0, state) if restored is None else (done, restored)
    if done > total:
      raise ValueError(f'{workdir}/{phase} has already run {done} steps, more than the {total} asked: ask for {done} '
                       'or more, or start a new run directory.')
    if done == total:
      print(f'{phase}: finished earlier ({total} steps), restored from its last checkpoint', flush=True)
      return state
    if done:
      print(f'{phase}: resuming after step {done} of {total}', flush=True)
    with contextlib.ExitStack() as stack:
      writer = parallel.is_writer()  # the other processes of a multi-host run step and save, silently
      log = writer and stack.enter_context(MetricsLogger(workdir, resume_step=done or None, phase=phase))
      bar = writer and stack.enter_context(
          Progress(total - done, phase if not done else f'{phase} after step {done}', unit='steps'))
      for i in range(done, total):
        start = time.perf_counter()
        state, metrics = step(state)
        values = scalars(parallel.fetch(metrics))
        seconds = time.perf_counter() - start
        values['perf/seconds'] = seconds
        if env_steps_per_call:
          values['perf/env_steps_per_s'] = env_steps_per_call / seconds
        if writer:
          log.write(i + 1, values)
        if (i + 1) % checkpoint_every == 0 or i + 1 == total:
          checkpoints.save(i + 1, state, metrics=values, force=True)
        if writer:
          bar.update(1, **{k: f'{v:.3g}' for k, v in values.items() if k in ('nll_low', 'success', 'step_completion')})
  return state


def _trainer(config):
  """(init_state, make_step) of a fine-tuning config: RRF's NPG variants, or AW-Opt."""
  if isinstance(config, awopt.AWOptConfig):
    return awopt.init_state, awopt.make_awopt_step
  return rrf.init_state, rrf.make_rrf_step


# --- the phases -----------------------------------------------------------------------------------


def ril(workdir: str, run_config: dict, configs: RunConfigs, demos, seed: int, train_steps: int,
        checkpoint_every: int, max_to_keep: int, from_workdir: str = '',
        boundaries: np.ndarray | None = None) -> tuple[Any, train.BCState]:
  """RIL (or the configured imitation baseline) on `demos` (host PaddedDemos; the oracle baseline
  also takes their element `boundaries`), or, with `from_workdir`, the final state of that run
  directory's phase (its network sizes must match this config's; check_source_ril, which main.py
  runs before loading the demos, checks the rest). Returns (agent, BCState)."""
  relabel.check_windows(configs.bc.relabel, demos.lengths)
  agent = train.make_agent(configs.bc)
  data = train.training_data(configs.bc.method, demos, boundaries)
  state = train.init_state(agent, configs.bc, data, jax.random.key(seed))
  if from_workdir:
    print(f'ril: the final checkpoint of {from_workdir}', flush=True)
    source = os.path.join(from_workdir, 'ril', 'checkpoints')
    return agent, parallel.put(load_state(source, state), configs.mesh)  # where a trained state would be
  mesh = configs.mesh
  state, device_demos = parallel.put((state, data), mesh)
  compiled = train.jit_train_step(agent, configs.bc, mesh)
  state = run_phase(workdir, 'ril', run_config, state, lambda s: compiled(s, device_demos), train_steps,
                    checkpoint_every, max_to_keep, lambda m: {k: float(v) for k, v in m.items()})
  return agent, state


def rrf_scalars(metrics: dict[str, np.ndarray], goals: tuple[str, ...]) -> dict[str, float]:
  """Per-goal RRF metrics ([G] arrays) as scalars: the mean over goals under each name, each goal's
  success and step completion (sampled and, when monitored, deterministic) and, with keep_best, its
  kept iteration and their success under 'goal/<goal>/', and per-element completion under 'element/'."""
  values = {name: float(np.mean(value)) for name, value in metrics.items() if name != 'element_completion'}
  per_goal = [name for name in rrf.CURVES + rrf.BEST if name in metrics]
  for g, goal in enumerate(goals):
    for name in per_goal:
      values[f'goal/{goal}/{name}'] = float(metrics[name][g])
  asked = np.stack([tasks.element_mask(goal) for goal in goals])  # [G, 7]
  for i, element in enumerate(tasks.ELEMENTS):
    if asked[:, i].any():
      values[f'element/{element}'] = float(metrics['element_completion'][asked[:, i], i].mean())
  return values


def fine_tune(workdir: str, run_config: dict, configs: RunConfigs, env, agent, ril_state: train.BCState, demos,
              seed: int, iterations: int, checkpoint_every: int, max_to_keep: int,
              boundaries: np.ndarray | None = None, goal_values: evaluation.GoalValues | None = None):
  """Per-goal fine-tuning (RRF, or AW-Opt) of every goal in configs.rrf_goals at once (the step
  vmapped over goals), each toward its evaluation.goal_states(goals, goal_values). Returns the final
  per-goal state (leading axis: goals); rrf.tuned_params gives the fine-tuned agents."""
  config, goals = configs.rrf, configs.rrf_goals
  init_state, make_step = _trainer(config)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), len(goals))
  state = jax.vmap(lambda k: init_state(agent, config, ril_state.average, ril_state.normalizers, k))(keys)
  goal_states = jnp.asarray(evaluation.goal_states(goals, goal_values))
  mesh = configs.mesh
  state, goal_states = parallel.put((state, goal_states), mesh, parallel.GOAL)
  device_demos = parallel.put(train.training_data(config.pretrain, demos, boundaries), mesh) if config.uses_demos \
      else None
  compiled = parallel.jit_step(make_step(env, agent, config, mesh), per_goal=True, mesh=mesh)
  return run_phase(workdir, 'rrf', run_config, state, lambda s: compiled(s, goal_states, device_demos), iterations,
                   checkpoint_every, max_to_keep, functools.partial(rrf_scalars, goals=goals),
                   env_steps_per_call=len(goals) * config.num_envs * config.episode_steps)


def distillation_start_key(seed: int) -> jax.Array:
  """The key a run's distillation starts from (its one step splits it into collect, fit and next keys)."""
  return jax.random.fold_in(jax.random.key(seed), 2)


def distillation(workdir: str, run_config: dict, configs: RunConfigs, env, agent, ril_state: train.BCState,
                 tuned, seed: int, max_to_keep: int,
                 goal_values: evaluation.GoalValues | None = None) -> dict[str, Any]:
  """One multi-goal agent from the per-goal agents' rollouts (toward evaluation.goal_states(goals,
  goal_values)), starting from the RIL parameters. Returns its params (normalizers: RIL's)."""
  config, goals = configs.distill, configs.rrf_goals
  goal_states = jnp.asarray(evaluation.goal_states(goals, goal_values))
  collect = jax.jit(functools.partial(distill.collect, env, agent, episodes=config.episodes_per_goal,
                                      num_steps=configs.rrf.episode_steps, levels=configs.rrf.levels))
  fit = jax.jit(distill.make_distill(agent, config))

  def step(state):
    collect_key, fit_key, key = jax.random.split(state['key'], 3)
    data = collect(rrf.tuned_params(tuned), ril_state.normalizers, collect_key, goal_states)
    params, metrics = fit(state['params'], ril_state.normalizers, data, fit_key)
    return {'params': params, 'key': key}, {name: value[-1] for name, value in metrics.items()}

  start = parallel.put({'params': jax.tree.map(jnp.copy, ril_state.average), 'key': distillation_start_key(seed)},
                       configs.mesh)
  final = run_phase(workdir, 'distill', run_config, start, step, 1, 1, max_to_keep,
                    lambda m: {f'final_{k}': float(v) for k, v in m.items()})
  return final['params']


# --- loading from a run directory -----------------------------------------------------------------


def _ril_target(agent, bc: train.BCConfig) -> train.BCState:
  """A BCState of the right structure and shapes (values unused) for restoring."""
  steps = bc.relabel.window_high
  placeholder = PaddedDemos(np.zeros((1, steps + 1, tasks.NQ), np.float32), np.zeros((1, steps, ACTION_DIM), np.float32),
                            np.array([steps], np.int32))
  boundaries = np.full((1, 4), steps, np.int32)  # for the oracle baseline's data; others ignore them
  return train.init_state(agent, bc, train.training_data(bc.method, placeholder, boundaries), jax.random.key(0))


def _tuned_target(agent, configs: RunConfigs, ril_state: train.BCState):
  """A per-goal fine-tuning state of the right structure and shapes (values unused) for restoring."""
  keys = jax.random.split(jax.random.key(0), len(configs.rrf_goals))
  init_state = _trainer(configs.rrf)[0]
  return jax.vmap(lambda k: init_state(agent, configs.rrf, ril_state.average, ril_state.normalizers, k))(keys)


class Policy(NamedTuple):
  agent: Any
  params: dict[str, Any]
  normalizers: dict[str, Any]
  goals: tuple[str, ...]
  goal_values: dict[str, tuple[float, ...]]  # the element values of the run's goal states


TABLE_EVAL_SEED = 1000  # train_ril.py evaluates seed k's run from reset key TABLE_EVAL_SEED + k


def read_table(workdir: str) -> dict:
  """An experiments/train_ril.py workdir's results.json: its config, each method's BCConfig
  ('configs'), goal values and per-seed summaries ('results': {method: [seed 0's, seed 1's, ...]})."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: is {workdir} a train_ril.py workdir whose command finished?')
  with open(path) as f:
    results = json.load(f)
  if 'configs' not in results:
    raise ValueError(f'{path} is not a train_ril.py table (it has no "configs").')
  return results


def load_table_state(workdir: str, method: str, seed: int) -> tuple[train.BCState, train.BCConfig]:
  """The final training state of run (method, seed) of an experiments/train_ril.py workdir, and its config."""
  results = read_table(workdir)
  if method not in results['configs']:
    raise ValueError(f'{workdir} has no {method!r} runs; it has {sorted(results["configs"])}.')
  config = train.config_from_dict(results['configs'][method])
  target = _ril_target(train.make_agent(config), config)
  return load_state(os.path.join(workdir, f'{method}_seed{seed}', 'checkpoints'), target), config


def load_table_run(workdir: str, method: str, seed: int) -> tuple[Policy, train.BCConfig]:
  """The agent of run (method, seed) of an experiments/train_ril.py workdir, acting with its weight
  average, with the table's goals and goal values, and its config (from its results.json)."""
  results = read_table(workdir)
  state, config = load_table_state(workdir, method, seed)
  agent = train.make_agent(config)
  goal_values = {element: tuple(v) for element, v in results['goal_values'].items()}
  return Policy(agent, state.average, state.normalizers, goal_list(results['config']['goals']), goal_values), config


def ensemble(members: list[Policy]) -> Policy:
  """Two or more runs of one train_ril.py method as one agent (rollout.ensemble: at each level, the mean of
  their means). They must share network shapes and normalizers, as the seeds of one table do (fitted to the
  same demos); ValueError otherwise."""
  if len(members) < 2:
    raise ValueError(f'an ensemble needs two or more members, got {len(members)}.')
  first = members[0]
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  if not all(same(p.normalizers, first.normalizers) for p in members):
    raise ValueError('the runs were trained on other data (their normalizers differ).')
  return first._replace(agent=rollout.ensemble(first.agent, len(members)),
                        params=networks.stack_members([p.params for p in members]))


GOAL_VALUES_FILE = 'goal_values.json'  # in a run directory: {"source": ..., "values": {element: [...]}}


def write_goal_values(workdir: str, source: str, values: evaluation.GoalValues) -> None:
  """<workdir>/goal_values.json, which load_policy reads for a run with goal_values = 'demos'."""
  write_atomic(os.path.join(workdir, GOAL_VALUES_FILE),
               lambda f: f.write(json.dumps({'source': source, 'values': values}, indent=1).encode()))


def run_goal_values(workdir: str, source: str, demos: PaddedDemos) -> dict[str, tuple[float, ...]]:
  """evaluation.goal_values(source, demos), also written to <workdir>/goal_values.json for load_policy."""
  values = evaluation.goal_values(source, demos)
  if parallel.is_writer():
    write_goal_values(workdir, source, values)
  return values


def load_policy(workdir: str, phase: str = 'distill', step: int | None = None, kept: bool = True) -> Policy:
  """A main-job run directory's agent, from the checkpoint of `phase` at `step` (default: its last):
  'ril' and 'distill' give one agent for every goal (goals: the run's eval goals), 'rrf' the per-goal
  agents, params stacked over `goals` (the run's rrf goals): with `kept` and rrf.keep_best, each
  goal's best monitored parameters so far, else the parameters the iterations trained to. Evaluate
  it with the run's goal values to get its numbers."""
  if phase not in ('ril', 'rrf', 'distill'):
    raise ValueError(f"phase must be 'ril', 'rrf' or 'distill', got {phase!r}.")
  config_phase = phase
  if phase == 'ril' and not os.path.isdir(os.path.join(workdir, 'ril', 'checkpoints')):
    config_phase = 'rrf'  # train_rpl.py's run: its RIL agent is config.ril.from_workdir's
  config = config_dict.ConfigDict(read_config(os.path.join(workdir, config_phase, 'checkpoints')))
  configs = build(config, loading=True)
  if configs.goal_values == 'task':
    goal_values = evaluation.goal_values('task')
  else:
    path = os.path.join(workdir, GOAL_VALUES_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} is missing: the run used goal_values=demos, and main.py writes them there.')
    with open(path) as f:
      goal_values = {element: tuple(v) for element, v in json.load(f)['values'].items()}
  agent = train.make_agent(configs.bc)
  ril_dir = os.path.join(config.ril.get('from_workdir') or workdir, 'ril', 'checkpoints')  # older runs lack the key
  ril_state = load_state(ril_dir, _ril_target(agent, configs.bc), step if phase == 'ril' else None)
  if phase == 'ril':
    return Policy(agent, ril_state.average, ril_state.normalizers, configs.eval_goals, goal_values)
  if phase == 'distill':
    target = {'params': ril_state.average, 'key': jax.random.key(0)}
    return Policy(agent, load_state(os.path.join(workdir, 'distill', 'checkpoints'), target, step)['params'],
                  ril_state.normalizers, configs.eval_goals, goal_values)
  tuned = load_state(os.path.join(workdir, 'rrf', 'checkpoints'), _tuned_target(agent, configs, ril_state), step)
  return Policy(agent, rrf.tuned_params(tuned) if kept else tuned.params, ril_state.normalizers, configs.rrf_goals,
                goal_values)
