"""Physics fidelity of the reduced kitchen model: which PhysicsConfig to use by default.

Owns the open-loop fidelity check: C MuJoCo physics, single-threaded (no MJX; the env's action
mapping and element predicates run eagerly). Scripted action sequences (smooth arm motion, plus
contact sequences found by a seeded search that move the objects) are rolled out with
FrankaKitchen-v1's action semantics (velocity action -> position target from the current robot
qpos, both clipped by franka_config) on:
- the reference: the reduced model at REFERENCE_PHYSICS (dt 0.002 x 40, Euler, Newton 100 iterations);
- the reference with its actions perturbed by 1e-6 (the noise floor: how chaotic the rollouts are);
- the stock model with its own options (the effect of the collision reduction itself);
- candidate configs of the reduced model (timestep/substeps x integrator x Newton iterations).
Every row is compared with the reference: robot tracking error, object-state error and element-distance
error per control step (free-motion and contact sequences summarized apart), control steps where an
element's completion (< 0.3) differs, instability, and physics wall time per control step.
"""

import itertools
import json
import time

from absl import app
from absl import flags
import mujoco
import numpy as np

from envs.kitchen import env as kitchen_env
from envs.kitchen import model as kitchen_model
from envs.kitchen import tasks

_STEPS = flags.DEFINE_integer('steps', 100, 'Control steps per action sequence.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path (default: print only).')
_CANDIDATES = flags.DEFINE_list(
    'candidates', None, 'Candidates as <timestep>x<substeps>-<integrator>-<iterations>, e.g. '
    '0.004x20-implicitfast-4 (default: the full grid).')
_SEARCH = flags.DEFINE_integer('search', 150, 'Random smooth sequences tried when looking for contact.')
_PER_ELEMENT = flags.DEFINE_integer('per_element', 2, 'Contact sequences kept per most-moved element.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats per config; the fastest is reported.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the scripted and searched sequences.')

TIMINGS = ((0.002, 40), (0.004, 20), (0.005, 16), (0.008, 10), (0.01, 8))
INTEGRATORS = ('euler', 'implicitfast')
ITERATIONS = (4, 10)
LS_ITERATIONS = 8
MOVED = 1e-2  # A contact sequence moves some object coordinate by more than this (reference physics).
NOISE = 1e-6  # Action perturbation of the noise-floor row: how chaotic the reference itself is.
_BAD = (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL)


def candidate_name(c: kitchen_model.PhysicsConfig) -> str:
  return f'{c.timestep:g}x{c.substeps}-{c.integrator}-{c.iterations}'


def parse_candidate(name: str) -> kitchen_model.PhysicsConfig:
  timing, integrator, iterations = name.split('-')
  timestep, substeps = timing.split('x')
  return kitchen_model.PhysicsConfig(float(timestep), int(substeps), integrator, 'newton', int(iterations),
                                     LS_ITERATIONS)


def candidate_grid() -> list[kitchen_model.PhysicsConfig]:
  return [kitchen_model.PhysicsConfig(dt, n, integ, 'newton', it, LS_ITERATIONS)
          for (dt, n), integ, it in itertools.product(TIMINGS, INTEGRATORS, ITERATIONS)]


def rollout(model: mujoco.MjModel, substeps: int, actions: np.ndarray) -> dict:
  """qpos after reset and after each control step ([T+1, 30]; NaN from an unstable step on), the first
  unstable control step (None if stable) and the wall time of the physics steps."""
  config = kitchen_model.franka_config()
  pos_bound, vel_bound = config['pos_bound'][:tasks.ROBOT_DOF], config['vel_bound'][:tasks.ROBOT_DOF]
  data = mujoco.MjData(model)
  data.qpos[:] = tasks.INIT_QPOS
  mujoco.mj_forward(model, data)
  qpos = np.full((len(actions) + 1, model.nq), np.nan)
  qpos[0] = data.qpos
  unstable_at = None
  seconds = 0.0  # physics only: the eager action mapping is the same for every config
  for t, action in enumerate(actions):
    data.ctrl[:] = kitchen_env.position_target(data.qpos[:tasks.ROBOT_DOF], action, pos_bound, vel_bound)
    start = time.perf_counter()
    for _ in range(substeps):
      mujoco.mj_step(model, data)
    seconds += time.perf_counter() - start
    # C MuJoCo resets a diverging simulation to qpos0 (time back to 0) and counts a warning.
    expected_time = (t + 1) * substeps * model.opt.timestep
    if (any(data.warning[w].number for w in _BAD) or abs(data.time - expected_time) > 0.5 * model.opt.timestep
        or not (np.isfinite(data.qpos).all() and np.isfinite(data.qvel).all())):
      unstable_at = t + 1
      break
    qpos[t + 1] = data.qpos
  return {'qpos': qpos, 'unstable_at': unstable_at, 'seconds': seconds}


def smooth_actions(rng: np.random.Generator, steps: int, alpha: float = 0.9, scale: float = 0.5,
                   drift: float = 0.0) -> np.ndarray:
  """Low-passed Gaussian actions (unit stationary std times `scale`) plus a random constant drift per joint."""
  noise = rng.normal(size=(steps, tasks.ROBOT_DOF)) * scale * np.sqrt(1 - alpha**2)
  bias = rng.uniform(-drift, drift, size=tasks.ROBOT_DOF)
  actions, a = np.empty_like(noise), rng.normal(size=tasks.ROBOT_DOF) * scale
  for t in range(steps):
    a = alpha * a + noise[t]
    actions[t] = a
  return np.clip(actions + bias, -1.0, 1.0)


def sinusoid_actions(rng: np.random.Generator, steps: int, amplitude: float = 0.5) -> np.ndarray:
  """Per-joint sinusoids with periods of 20..60 control steps and random phases."""
  period = rng.uniform(20, 60, size=tasks.ROBOT_DOF)
  phase = rng.uniform(0, 2 * np.pi, size=tasks.ROBOT_DOF)
  t = np.arange(steps)[:, None]
  return amplitude * np.sin(2 * np.pi * t / period + phase)


def object_motion(qpos: np.ndarray) -> np.ndarray:
  """[21]: max over steps of |object qpos - reset object qpos|."""
  return np.nanmax(np.abs(qpos[:, tasks.ROBOT_DOF:] - tasks.INIT_QPOS[tasks.ROBOT_DOF:]), axis=0)


def most_moved_element(motion: np.ndarray) -> str:
  """The element whose coordinates moved most ('other knob' for the two knobs that are no element)."""
  coordinate = tasks.ROBOT_DOF + int(np.argmax(motion))
  return next((e for e, idx in tasks.ELEMENT_INDICES.items() if coordinate in idx), 'other knob')


def find_contact_sequences(model: mujoco.MjModel, substeps: int, steps: int, tries: int, per_element: int,
                           seed: int) -> dict[str, np.ndarray]:
  """Seeded search over drifting smooth sequences: the first `per_element` that move an object coordinate
  by more than MOVED, per most-moved element. Named 'contact_<element>_<try>'. Random stream 3 of `seed`."""
  found, hits = {}, {}
  for i in range(tries):
    actions = smooth_actions(np.random.default_rng([seed, 3, i]), steps, drift=0.6)
    motion = object_motion(rollout(model, substeps, actions)['qpos'])
    element = most_moved_element(motion)
    if motion.max() > MOVED and hits.get(element, 0) < per_element:
      hits[element] = hits.get(element, 0) + 1
      found[f'contact_{element.replace(" ", "_")}_{i}'] = actions
  return found


def distances(qpos: np.ndarray) -> np.ndarray:
  return np.asarray(tasks.element_distances(qpos))


def errors(qpos: np.ndarray, ref: np.ndarray) -> dict:
  """Max and mean over control steps (those before any instability) of the per-step max abs errors."""
  qpos, ref = qpos[1:], ref[1:]
  ok = np.isfinite(qpos).all(axis=1)
  qpos, ref = qpos[ok], ref[ok]
  per_step = {
      'robot': np.abs(qpos[:, :tasks.ROBOT_DOF] - ref[:, :tasks.ROBOT_DOF]).max(axis=1),
      'object': np.abs(qpos[:, tasks.ROBOT_DOF:] - ref[:, tasks.ROBOT_DOF:]).max(axis=1),
      'element_distance': np.abs(distances(qpos) - distances(ref)).max(axis=1),
  }
  completion_flips = int(((distances(qpos) < tasks.THRESHOLD)
                          != (distances(ref) < tasks.THRESHOLD)).any(axis=1).sum())
  result = {f'{k}_max': float(v.max()) if len(v) else None for k, v in per_step.items()}
  result.update({f'{k}_mean': float(v.mean()) if len(v) else None for k, v in per_step.items()})
  result['completion_flip_steps'] = completion_flips
  return result


def summarize(per_sequence: dict) -> dict:
  """Free motion (no contact sequence): worst robot error. Contact sequences: median and max over sequences
  of their max errors (the median is robust to the one sequence whose contact outcome flips)."""
  def values(key, contact):
    return [s[key] for name, s in per_sequence.items()
            if name.startswith('contact_') == contact and s[key] is not None]
  summary = {'free_robot_max': max(values('robot_max', False)), 'free_robot_mean': max(values('robot_mean', False))}
  for key in ('robot', 'object', 'element_distance'):
    summary[f'contact_{key}_median'] = float(np.median(values(f'{key}_max', True)))
    summary[f'contact_{key}_max'] = max(values(f'{key}_max', True))
  summary['completion_flip_steps'] = sum(s['completion_flip_steps'] for s in per_sequence.values())
  summary['unstable'] = sorted(name for name, s in per_sequence.items() if s['unstable_at'] is not None)
  return summary


def evaluate(model: mujoco.MjModel, substeps: int, sequences: dict, references: dict, repeats: int) -> dict:
  """Errors per sequence against `references`, their summary, and the fastest ms per control step."""
  runs = {name: rollout(model, substeps, actions) for name, actions in sequences.items()}
  seconds = sum(r['seconds'] for r in runs.values())
  for _ in range(repeats - 1):
    seconds = min(seconds, sum(rollout(model, substeps, a)['seconds'] for a in sequences.values()))
  per_sequence = {name: {**errors(r['qpos'], references[name]), 'unstable_at': r['unstable_at']}
                  for name, r in runs.items()}
  total_steps = sum(len(a) for a in sequences.values())
  return {'summary': summarize(per_sequence), 'per_sequence': per_sequence,
          'ms_per_control_step': 1e3 * seconds / total_steps}


def print_table(rows: dict) -> None:
  columns = ('free_robot_max', 'free_robot_mean', 'contact_robot_median', 'contact_robot_max',
             'contact_object_median', 'contact_object_max', 'contact_element_distance_median',
             'contact_element_distance_max')
  print('Errors vs the reference, max over control steps. free: sinusoid + smooth_random, worst of the two;\n'
        'contact: median / max over the contact sequences. elem = element distance (success at < 0.3);\n'
        'flips: control steps (all sequences) where some element\'s completion differs from the reference.')
  print(f"{'config':<26} {'free robot':>19} {'contact robot':>19} {'contact object':>19} {'contact elem':>19} "
        f"{'flips':>5} {'ms/ctrl':>7} {'speedup':>7}  unstable")
  print(f"{'':<26} " + ' '.join(f"{'max':>9} {'mean':>9}" if i == 0 else f"{'median':>9} {'max':>9}"
                                  for i in range(4)))
  ref_ms = rows['reference']['ms_per_control_step']
  for name, r in rows.items():
    s = r['summary']
    print(f"{name:<26} " + ' '.join(f'{s[c]:>9.2e}' for c in columns)
          + f" {s['completion_flip_steps']:>5d} {r['ms_per_control_step']:>7.3f} "
          f"{ref_ms / r['ms_per_control_step']:>7.2f}  {','.join(s['unstable']) or '-'}")


def main(argv):
  del argv
  steps, seed = _STEPS.value, _SEED.value
  ref_physics = kitchen_model.REFERENCE_PHYSICS
  ref_model = kitchen_model.build_model(ref_physics)
  print(f'mujoco {mujoco.__version__}; searching {_SEARCH.value} smooth sequences for contact ...')
  sequences = {
      'sinusoid': sinusoid_actions(np.random.default_rng([seed, 0]), steps),
      'smooth_random': smooth_actions(np.random.default_rng([seed, 1]), steps),
      **find_contact_sequences(ref_model, ref_physics.substeps, steps, _SEARCH.value, _PER_ELEMENT.value, seed),
  }
  noise = np.random.default_rng([seed, 2])
  perturbed = {name: a + NOISE * noise.normal(size=a.shape) for name, a in sequences.items()}
  references = {name: rollout(ref_model, ref_physics.substeps, a)['qpos'] for name, a in sequences.items()}
  motion = {name: float(object_motion(q).max()) for name, q in references.items()}
  print('object motion under the reference (max over steps and coordinates of |object qpos - reset|):')
  for name, m in motion.items():
    print(f'  {name:<30} {m:.3g}')

  rows = {'reference': evaluate(ref_model, ref_physics.substeps, sequences, references, _REPEATS.value),
          f'reference, actions+{NOISE:g}': evaluate(ref_model, ref_physics.substeps, perturbed, references,
                                                     _REPEATS.value),
          'stock (own options)': evaluate(kitchen_model.stock_model(), ref_physics.substeps, sequences, references,
                                          _REPEATS.value)}
  candidates = [parse_candidate(c) for c in _CANDIDATES.value] if _CANDIDATES.value else candidate_grid()
  for c in candidates:
    rows[candidate_name(c)] = evaluate(kitchen_model.build_model(c), c.substeps, sequences, references,
                                       _REPEATS.value)
  print_table(rows)
  if _OUT.value:
    result = {'mujoco': mujoco.__version__, 'steps': steps, 'seed': seed, 'object_motion': motion,
              'reference': candidate_name(ref_physics), 'rows': rows}
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
