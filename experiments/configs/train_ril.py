"""experiments/train_ril.py: RIL against the two GCBC baselines on one demo dataset (Table 1).

  python experiments/train_ril.py --workdir=/tmp/ril --config.demos=data/play
  python experiments/train_ril.py --workdir=/tmp/ril --config.methods=ril --config.seeds=1 --config.train_steps=10
"""

from ml_collections import config_dict

from envs.kitchen import tasks


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.demos = 'data/play'  # a dataset directory (experiments/generate_demos.py)
  config.methods = 'ril,gcbc,gcbc_final'  # comma-separated: Table 1's methods
  config.seeds = 3  # seeds 0..seeds-1 per method
  config.train_steps = 40  # calls of the compiled step, each `updates_per_step` updates
  config.updates_per_step = 50
  config.batch_size = 256  # relabeled tuples per level per update
  config.learning_rate = 1e-3
  config.hidden = (256, 256)
  config.relative_goals = False  # goals enter the networks as offsets from the state
  config.relative_subgoals = False  # RIL's high level predicts its subgoal's offset from the state
  config.object_goals = False  # the task-goal level ignores its goal's robot joints (train.BCConfig)
  # rad: robot joints of half the low level's tuples displaced, labels corrected (train.BCConfig)
  config.corrective_noise = 0.0
  # noise on the low level's goals: rad on the arm joints, m on the fingers (train.BCConfig)
  config.subgoal_noise = 0.0
  config.subgoal_finger_noise = 0.0
  config.average_decay = 0.0  # per update: act with a moving average of the weights (train.BCConfig)
  config.window_low = 30  # W_l
  config.window_high = 260  # W_h (also the GCBC window)
  config.horizon = 30  # H
  config.goals = ','.join(tasks.COMPOUND_GOALS)
  # The agents' goal states: 'demos' puts each element where the demos leave it completed, 'task' at
  # FrankaKitchen's goal values (rpl_jax/evaluation.py). Completion is judged against the goal values.
  config.goal_values = 'demos'
  config.eval_episodes = 10
  # The paper used 280 steps for human demos; our scripted play takes 400-800 steps for four elements.
  config.episode_steps = 800
  config.stochastic = False  # evaluate sampled actions instead of the policy mean
  config.backend = 'auto'
  config.videos = 0  # RIL episodes to render as GIFs (first seed, first goals)
  config.checkpoint_every = 20  # calls between a run's checkpoints (and one at the end)
  return config
