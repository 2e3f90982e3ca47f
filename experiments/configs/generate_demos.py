"""experiments/generate_demos.py: scripted play demonstrations (rpl_jax/data/play.py has the rules).

  python experiments/generate_demos.py --out_dir=data/play                          # 400 demos
  python experiments/generate_demos.py --out_dir=/tmp/play --overwrite --config.num_demos=8 \
      --config.batch_size=8 --config.orderings=topknob-bottomknob-switch-slide
"""

from ml_collections import config_dict

from envs.kitchen import tasks


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.num_demos = 400  # accepted demos to collect
  config.seed = 0  # shard i draws its candidates from (seed, i)
  config.backend = 'auto'
  config.orderings = ','.join(tasks.ALL_ORDERINGS)  # comma-separated element orderings to draw plans from
  config.batch_size = 64  # parallel envs per rollout batch (a resumed run needs the same)
  config.max_steps = 800  # control steps allowed to complete the four elements
  config.extra_steps = 5  # steps kept after the fourth element completes
  config.reset_noise_scale = 0.005  # uniform noise on the reset qpos
  # Std of Gaussian noise on the executed (and stored) expert actions; the expert corrects it.
  config.action_noise = 0.0
  config.noise_correlation = 0.0  # AR(1) coefficient of that noise (0: white)
  config.noise_in_transit_only = False  # noise only on the joint-space moves between elements
  config.speed_range = (0.7, 1.3)  # range of the expert's per-demo speed factor
  config.max_pause = 2  # longest random pause (steps) between the expert's phases
  config.retry_probability = 0.1  # per element: chance that the expert lets go midway and retries
  config.demos_per_shard = 100
  config.max_rollouts = 0  # give up after this many rollouts; 0: 20 x num_demos
  config.videos = 2  # demos to render as GIFs (and on the contact sheet); 0: none
  config.video_dir = ''  # where GIFs and contact_sheet.png go; empty: <out_dir>/videos
  config.video_stride = 2  # render every n-th state
  return config
