"""Generate play demonstrations with the scripted expert: four-element plans drawn from the RPL
orderings, rolled out in parallel envs, cut after the last element, replay-checked, and written shard
by shard as an rpl_jax demo dataset (rpl_jax/data/play.py has the rules). Rejected rollouts are
counted, never saved. Ends with summary.json in --out_dir and GIFs + a contact sheet of the first
--videos demos.

  python experiments/generate_demos.py --num_demos=400 --out_dir=data/play
  python experiments/generate_demos.py --num_demos=8 --batch_size=8 --orderings=topknob-bottomknob-switch-slide \
      --out_dir=/tmp/play --overwrite

Rendering needs an offscreen OpenGL platform: MUJOCO_GL=osmesa or MUJOCO_GL=egl on a headless host.
"""

import dataclasses
import json
import math
import os
import sys
import time

from absl import app
from absl import flags

from envs.kitchen import KitchenConfig, KitchenEnv, render, tasks
from envs.kitchen.expert import Expert, ExpertConfig
from envs.kitchen.model import CONTROL_DT
from rpl_jax.data import play
from rpl_jax.data.demos import DatasetWriter, load_demos
from rpl_jax.logs import Progress

_NUM_DEMOS = flags.DEFINE_integer('num_demos', 400, 'Accepted demos to collect.')
_SEED = flags.DEFINE_integer('seed', 0, 'Run seed; shard i draws its candidates from (seed, i).')
_BACKEND = flags.DEFINE_enum('backend', 'auto', ['auto', 'mjx', 'cpu'], 'Physics backend.')
_OUT_DIR = flags.DEFINE_string('out_dir', 'data/play', 'Dataset directory.')
_ORDERINGS = flags.DEFINE_list('orderings', list(tasks.ALL_ORDERINGS),
                               'Element orderings to draw plans from, e.g. microwave-kettle-topknob-hinge.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Parallel envs per rollout batch (a resumed run needs the same).')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 700, 'Control steps allowed to complete the four elements.')
_EXTRA_STEPS = flags.DEFINE_integer('extra_steps', 5, 'Steps kept after the fourth element completes.')
_RESET_NOISE = flags.DEFINE_float('reset_noise_scale', 0.005, 'Uniform noise on the reset qpos.')
_ACTION_NOISE = flags.DEFINE_float('action_noise', 0.0, 'Std of Gaussian noise on the executed (and stored) '
                                   'expert actions; the expert corrects it, so demos show recoveries.')
_SPEED_RANGE = flags.DEFINE_list('speed_range', ['0.7', '1.3'], "Range of the expert's per-demo speed factor.")
_MAX_PAUSE = flags.DEFINE_integer('max_pause', 2, "Longest random pause (steps) between the expert's phases.")
_RETRY = flags.DEFINE_float('retry_probability', 0.1, 'Per element: chance that the expert lets go midway and retries.')
_DEMOS_PER_SHARD = flags.DEFINE_integer('demos_per_shard', 100, 'Demos per dataset shard.')
_MAX_ROLLOUTS = flags.DEFINE_integer('max_rollouts', None,
                                     'Give up after this many rollouts (default: 20 x --num_demos).')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue the dataset in --out_dir, skipping written shards.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the dataset in --out_dir.')
_VIDEOS = flags.DEFINE_integer('videos', 2, 'Demos to render as GIFs (and on the contact sheet); 0: none.')
_VIDEO_DIR = flags.DEFINE_string('video_dir', None, 'Where GIFs and contact_sheet.png go (default: <out_dir>/videos).')
_VIDEO_STRIDE = flags.DEFINE_integer('video_stride', 2, 'Render every n-th state.')

_FRAME_SIZE = (240, 320)  # height, width


def _shard_sizes() -> list[int]:
  n, per = _NUM_DEMOS.value, _DEMOS_PER_SHARD.value
  return [min(per, n - i * per) for i in range(math.ceil(n / per))]


def _check_written(writer: DatasetWriter, sizes: list[int]) -> None:
  """A resumed dataset must hold the shards this run would write, no others and no other sizes."""
  for entry in writer.metadata['shards']:
    i = entry['index']
    if i >= len(sizes) or entry['num_demos'] != sizes[i]:
      raise app.UsageError(f'{_OUT_DIR.value}: shard {i} holds {entry["num_demos"]} demos, but --num_demos='
                           f'{_NUM_DEMOS.value} --demos_per_shard={_DEMOS_PER_SHARD.value} make shard sizes {sizes}; '
                           'resume with the original flags or pass --overwrite.')


def _write_videos(env: KitchenEnv, video_dir: str) -> list[str]:
  demos = load_demos(_OUT_DIR.value)[:_VIDEOS.value]
  os.makedirs(video_dir, exist_ok=True)
  stride = _VIDEO_STRIDE.value
  rows, paths = [], []
  for i, demo in enumerate(demos):
    # The saved observations are the env's (slightly noisy) qpos: close enough to draw.
    frames = render.render_frames(env.model, demo.observations[::stride, :tasks.NQ], *_FRAME_SIZE)
    paths.append(os.path.join(video_dir, f'demo-{i:03d}.gif'))
    render.write_gif(paths[-1], frames, fps=1 / (stride * CONTROL_DT))  # real time
    rows.append(frames)
  paths.append(os.path.join(video_dir, 'contact_sheet.png'))
  render.write_contact_sheet(paths[-1], rows, columns=8)
  return paths


def main(argv):
  del argv
  for name, value in (('num_demos', _NUM_DEMOS), ('demos_per_shard', _DEMOS_PER_SHARD),
                      ('video_stride', _VIDEO_STRIDE)):
    if value.value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {value.value}.')
  try:
    config = play.PlayConfig(tuple(_ORDERINGS.value), _MAX_STEPS.value, _EXTRA_STEPS.value, _BATCH_SIZE.value,
                             _ACTION_NOISE.value)
    low, high = (float(v) for v in _SPEED_RANGE.value)
    expert_config = ExpertConfig(speed_range=(low, high), max_pause=_MAX_PAUSE.value,
                                 retry_probability=_RETRY.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  env = KitchenEnv(KitchenConfig(backend=_BACKEND.value, reset_noise_scale=_RESET_NOISE.value))
  if _VIDEOS.value > 0:
    render.check_gl(env.model)  # fail now rather than after the generation
  env_config = dataclasses.replace(env.config, backend=env.backend)
  dataset_config = {'env': dataclasses.asdict(env_config), 'play': dataclasses.asdict(config),
                    'expert': dataclasses.asdict(expert_config)}
  writer = DatasetWriter(_OUT_DIR.value, config=dataset_config, backend=env.backend, seed=_SEED.value,
                         demos_per_shard=_DEMOS_PER_SHARD.value, resume=_RESUME.value, overwrite=_OVERWRITE.value)
  sizes = _shard_sizes()
  _check_written(writer, sizes)
  todo = [i for i in range(len(sizes)) if i not in writer.written_shards()]
  target = sum(sizes[i] for i in todo)
  print(f'{env.backend} backend; {target} demos to generate in {len(todo)} shards '
        f'({len(sizes) - len(todo)} already written) into {_OUT_DIR.value}')

  stats = play.PlayStats(config.max_steps)
  status, setup_seconds, start = 'complete', 0.0, time.perf_counter()
  if todo:
    player = play.Player(env, Expert(env.model, expert_config), config)
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    max_rollouts = _MAX_ROLLOUTS.value or 20 * _NUM_DEMOS.value
    with Progress(target, 'accepted', unit='demos', per='min') as bar:
      def on_batch():
        bar.update(len(stats.kept_lengths) - bar.done, rejected=stats.rejected)

      try:
        for i in todo:
          batch = play.play_shard(player, _SEED.value, i, sizes[i], stats, max_rollouts, on_batch=on_batch)
          writer.write_shard(i, [batch.demo(j) for j in range(sizes[i])], seeds=batch.seeds,
                             element_orders=[play.element_names(p) for p in batch.plans])
      except play.TooManyRollouts as e:
        status = f'{e} Shard {i} is not written (the shards before it are).'
  seconds = time.perf_counter() - start  # the generation, compiles included; not the expert's setup

  summary = {'status': status, 'backend': env.backend, 'num_demos': _NUM_DEMOS.value, 'generated_now': target,
             'shards_skipped': len(sizes) - len(todo), **stats.summary(),
             'expert_setup_s': setup_seconds, 'wall_time_s': seconds,
             'demos_per_minute': len(stats.kept_lengths) / seconds * 60 if seconds > 0 else None,
             'config': writer.metadata['config']}
  text = json.dumps(summary, indent=1)
  print(text)
  with open(os.path.join(_OUT_DIR.value, 'summary.json'), 'w') as f:
    f.write(text + '\n')
  if status != 'complete':
    sys.exit(status)
  if _VIDEOS.value > 0:
    for path in _write_videos(env, _VIDEO_DIR.value or os.path.join(_OUT_DIR.value, 'videos')):
      print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
