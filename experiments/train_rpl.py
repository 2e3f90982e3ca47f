"""RRF and distillation from a RIL checkpoint: the main job (experiments/main.py) with its RIL phase
loaded from --ril_workdir (a run directory with ril/checkpoints) instead of trained.

  python experiments/train_rpl.py --ril_workdir=runs/quick --workdir=runs/iril --config.rrf.variant=iril
  python experiments/train_rpl.py --ril_workdir=runs/quick --workdir=runs/npg --config.rrf.variant=npg \
      --config.rrf.goals=all --config.rrf.iterations=50

Writes the same run directory as the main job: learning curves (rrf_curve.png, TensorBoard), the
per-goal and distilled evaluations, report.md. The demos default to the RIL run's (<ril_workdir>/demos).
"""

import os

from absl import app
from absl import flags

import main  # experiments/main.py, beside this file

_RIL_WORKDIR = flags.DEFINE_string('ril_workdir', None, 'Run directory holding the RIL checkpoints.', required=True)


def run(argv):
  config = main.resolve_config()
  config.ril.from_workdir = _RIL_WORKDIR.value
  if not config.demos.path:
    config.demos.path = os.path.join(_RIL_WORKDIR.value, 'demos')
  main.main(argv, config)


if __name__ == '__main__':
  app.run(run)
