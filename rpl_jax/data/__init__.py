"""Demo datasets: our sharded, checksummed `.npz` format (demos.py) and a D4RL kitchen reader (d4rl.py)."""

from rpl_jax.data.d4rl import D4RLDemos, load_d4rl
from rpl_jax.data.demos import (SCHEMA_VERSION, DatasetError, DatasetWriter, Demo, PaddedDemos, check_demo,
                                load_demos, load_padded, pad_demos, read_element_steps, read_metadata)
