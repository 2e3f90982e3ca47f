"""RRF and distillation from a RIL checkpoint: the main job (experiments/main.py) with its RIL phase
loaded from --ril_workdir (a run directory with ril/checkpoints) instead of trained.

  python experiments/train_rpl.py --ril_workdir=runs/quick --workdir=runs/iril --config.rrf.variant=iril
  python experiments/train_rpl.py --ril_workdir=runs/quick --workdir=runs/npg --config.rrf.variant=npg \
      --config.rrf.goals=all --config.rrf.iterations=50

The run's ril.* settings are the RIL run's (its agent's window, horizon, goal forms and sizes, and the
BC term's windows); a --config.ril.* given here must agree with them where they decide what the agent
does. Writes the same run directory as the main job: learning curves (rrf_curve.png, TensorBoard), the
per-goal and distilled evaluations, report.md. The demos default to the RIL run's: the dataset its config
names (demos.path), else <ril_workdir>/demos, where the main job generates them.
"""

import os

from absl import app
from absl import flags

import main  # experiments/main.py, beside this file
from rpl_jax.checkpoint import CheckpointError, read_config

_RIL_WORKDIR = flags.DEFINE_string('ril_workdir', None, 'Run directory holding the RIL checkpoints.', required=True)


def run(argv):
  config = main.resolve_config()
  try:
    source = read_config(os.path.join(_RIL_WORKDIR.value, 'ril', 'checkpoints'))
  except CheckpointError as e:
    raise app.UsageError(f'--ril_workdir: {e}') from e
  trained = source['ril']
  given = {path.split('.', 1)[1] for path in main.command_line_overrides() if path.startswith('ril.')}
  for key, value in trained.items():
    if key in config.ril and key not in given | {'from_workdir'}:
      config.ril[key] = tuple(value) if isinstance(value, list) else value
  config.ril.from_workdir = _RIL_WORKDIR.value
  if not config.demos.path:  # the RIL run's dataset: the one it named, else the one it generated
    config.demos.path = source['demos']['path'] or os.path.join(_RIL_WORKDIR.value, 'demos')
  main.main(argv, config)


if __name__ == '__main__':
  app.run(run)
