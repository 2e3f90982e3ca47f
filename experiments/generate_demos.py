"""Generate play demonstrations with the scripted expert: four-element plans drawn from the RPL
orderings, rolled out in parallel envs, cut after the last element, replay-checked, and written shard
by shard as an rpl_jax demo dataset (rpl_jax/data/play.py has the rules). Rejected rollouts are
counted, never saved. Ends with summary.json in --out_dir and GIFs + a contact sheet of the first
--config.videos demos. The config is experiments/configs/generate_demos.py (--config.<key>=...).

  python experiments/generate_demos.py --config.num_demos=400 --out_dir=data/play
  python experiments/generate_demos.py --config.num_demos=8 --config.batch_size=8 \
      --config.orderings=topknob-bottomknob-switch-slide \
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
from ml_collections import config_flags

from envs.kitchen import KitchenConfig, KitchenEnv, expert, render, tasks
from envs.kitchen.expert import Expert, ExpertConfig
from envs.kitchen.model import CONTROL_DT
from rpl_jax.data import play
from rpl_jax.data.demos import DatasetWriter, load_demos
from rpl_jax.logs import Progress

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'generate_demos.py'),
    'The generator config (experiments/configs/generate_demos.py).')
_OUT_DIR = flags.DEFINE_string('out_dir', 'data/play', 'Dataset directory.')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue the dataset in --out_dir, skipping written shards.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the dataset in --out_dir.')

_FRAME_SIZE = (240, 320)  # height, width


def _shard_sizes() -> list[int]:
  n, per = _CONFIG.value.num_demos, _CONFIG.value.demos_per_shard
  return [min(per, n - i * per) for i in range(math.ceil(n / per))]


def _check_written(writer: DatasetWriter, sizes: list[int]) -> None:
  """A resumed dataset must hold the shards this run would write, no others and no other sizes."""
  for entry in writer.metadata['shards']:
    i = entry['index']
    if i >= len(sizes) or entry['num_demos'] != sizes[i]:
      raise app.UsageError(f'{_OUT_DIR.value}: shard {i} holds {entry["num_demos"]} demos, but --config.num_demos='
                           f'{_CONFIG.value.num_demos} --config.demos_per_shard={_CONFIG.value.demos_per_shard} make '
                           f'shard sizes {sizes}; '
                           'resume with the original flags or pass --overwrite.')


def _write_videos(env: KitchenEnv, video_dir: str) -> list[str]:
  demos = load_demos(_OUT_DIR.value)[:_CONFIG.value.videos]
  os.makedirs(video_dir, exist_ok=True)
  stride = _CONFIG.value.video_stride
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
  c = _CONFIG.value
  for name in ('num_demos', 'demos_per_shard', 'video_stride'):
    if c[name] < 1:
      raise app.UsageError(f'--config.{name} must be >= 1, got {c[name]}.')
  try:
    orderings = tuple(o.strip() for o in c.orderings.split(',') if o.strip())
    config = play.PlayConfig(orderings, c.max_steps, c.extra_steps, c.batch_size, c.action_noise, c.noise_correlation,
                             c.noise_in_transit_only)
    low, high = (float(v) for v in c.speed_range)
    expert_config = ExpertConfig(speed_range=(low, high), max_pause=c.max_pause, retry_probability=c.retry_probability)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  env = KitchenEnv(KitchenConfig(backend=_CONFIG.value.backend, reset_noise_scale=_CONFIG.value.reset_noise_scale))
  if _CONFIG.value.videos > 0:
    render.check_gl(env.model)  # fail now rather than after the generation
  env_config = dataclasses.replace(env.config, backend=env.backend)
  dataset_config = {'env': dataclasses.asdict(env_config), 'play': dataclasses.asdict(config),
                    'expert': {**dataclasses.asdict(expert_config), 'version': expert.VERSION}}
  writer = DatasetWriter(_OUT_DIR.value, config=dataset_config, backend=env.backend, seed=_CONFIG.value.seed,
                         demos_per_shard=_CONFIG.value.demos_per_shard, resume=_RESUME.value,
                         overwrite=_OVERWRITE.value)
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
    max_rollouts = _CONFIG.value.max_rollouts or 20 * _CONFIG.value.num_demos
    with Progress(target, 'accepted', unit='demos', per='min') as bar:
      def on_batch():
        bar.update(len(stats.kept_lengths) - bar.done, rejected=stats.rejected)

      try:
        for i in todo:
          batch = play.play_shard(player, _CONFIG.value.seed, i, sizes[i], stats, max_rollouts, on_batch=on_batch)
          writer.write_shard(i, [batch.demo(j) for j in range(sizes[i])], seeds=batch.seeds,
                             element_orders=[play.element_names(p) for p in batch.plans],
                             element_steps=play.element_steps(batch.completion))
      except play.TooManyRollouts as e:
        status = f'{e} Shard {i} is not written (the shards before it are).'
  seconds = time.perf_counter() - start  # the generation, compiles included; not the expert's setup

  summary = {'status': status, 'backend': env.backend, 'num_demos': _CONFIG.value.num_demos, 'generated_now': target,
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
  if _CONFIG.value.videos > 0:
    for path in _write_videos(env, _CONFIG.value.video_dir or os.path.join(_OUT_DIR.value, 'videos')):
      print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
