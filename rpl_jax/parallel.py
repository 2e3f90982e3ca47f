"""Data parallelism over a device mesh (jax.sharding), on one host or across hosts.

The mesh has two axes: `goal` (per-goal fine-tuning shards its stacked goals over it) and `data`
(env batches, rollouts and relabeled minibatches are split over it). Parameters, optimiser states and
demos are replicated. The compiled steps are ordinary `jit`s whose inputs live on the mesh and whose
batches carry a sharding constraint (`shard_batch`); XLA's SPMD partitioner then inserts the
all-reduces, so gradients, Fisher-vector products and the conjugate-gradient dot products reduce over
the `data` axis and a step computes the same function on any number of devices (up to float
summation order). Without a mesh every helper is the identity and nothing changes.

The C MuJoCo backend steps the whole batch in one host callback on the first device (its own
threads parallelise it); under a mesh XLA gathers the batch there and scatters it back, which is
what a single host with a native thread pool wants. MJX is traced and shards like everything else.

Multi-host: `initialize_distributed` wraps `jax.distributed.initialize`; afterwards `jax.devices()`
lists every host's devices, `make_mesh` spans them all, and each host runs the same program on its
own copy of the demos. Only process 0 writes logs and reports (`is_writer`); orbax checkpoints are
written collectively.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

GOAL, DATA = 'goal', 'data'
AXES = (GOAL, DATA)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Joins a multi-host run (call before any other JAX call); a no-op when `coordinator_address` is ''."""
  if not coordinator_address:
    if num_processes != 1 or process_id != 0:
      raise ValueError(f'num_processes={num_processes} and process_id={process_id} need a coordinator address.')
    return
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f'need num_processes >= 1 and 0 <= process_id < num_processes, got {num_processes} and '
                     f'{process_id}.')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU hosts (tests); accelerators ignore it
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_writer() -> bool:
  """Whether this process writes the run's logs, reports and videos (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def make_mesh(data: int = 0, goal: int = 1, devices=None) -> Mesh:
  """A (goal, data) mesh over `devices` (default: every device of every host). `data=0` takes all
  the devices the goal axis leaves."""
  devices = list(jax.devices() if devices is None else devices)
  if goal < 1 or data < 0:
    raise ValueError(f'mesh axes need goal >= 1 and data >= 0 (0: the rest), got goal={goal}, data={data}.')
  if data == 0:
    if len(devices) % goal:
      raise ValueError(f'a goal axis of {goal} does not divide the {len(devices)} devices.')
    data = len(devices) // goal
  if goal * data != len(devices):
    raise ValueError(f'a mesh of goal={goal} x data={data} needs {goal * data} devices; there are {len(devices)}.')
  return Mesh(np.asarray(devices).reshape(goal, data), AXES)


def devices_along(mesh: Mesh | None, axes: tuple[str, ...]) -> int:
  """How many devices a batch split over `axes` is spread across (1 without a mesh)."""
  return 1 if mesh is None else int(np.prod([mesh.shape[axis] for axis in axes]))


def check_divisible(mesh: Mesh | None, axes: tuple[str, ...], **sizes: int) -> None:
  """ValueError naming each size that the devices along the mesh's `axes` do not divide."""
  n = devices_along(mesh, axes)
  for name, size in sizes.items():
    if size % n:
      raise ValueError(f'{name}={size} is not divisible by the {n} devices of the mesh axes {axes}.')


def sharding(mesh: Mesh, *spec) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(*spec))


def put(tree, mesh: Mesh | None, *spec):
  """`tree` (host values or this process's arrays, the same on every process) on the mesh, every
  leaf's leading axes split as `spec` (no spec: replicated); unchanged without a mesh. Works when the
  mesh spans hosts, where `jax.device_put` cannot place a committed array."""
  if mesh is None:
    return tree
  target = sharding(mesh, *spec)

  def place(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(place(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

  return jax.tree.map(place, tree)


def shard_batch(tree, mesh: Mesh | None, axes: tuple[str, ...] = (DATA,)):
  """Inside a jitted step: every leaf's leading (batch) axis split over the mesh `axes` (default
  `data`; inside a per-goal vmap with spmd_axis_name=GOAL the goal axis is already taken)."""
  if mesh is None:
    return tree
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding(mesh, axes)), tree)


def jit_step(step, per_goal: bool = False, mesh: Mesh | None = None):
  """jit of a training iteration `step(state, goal, demos) -> (state, metrics)` with the state
  donated; `per_goal` vmaps it over stacked states and goals (demos shared), the goal axis sharded
  over the mesh's. With a mesh the state keeps its placement and the metrics come back replicated."""
  if per_goal:
    step = jax.vmap(step, in_axes=(0, 0, None), spmd_axis_name=None if mesh is None else GOAL)
  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  state_sharding = sharding(mesh, GOAL) if per_goal else sharding(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, sharding(mesh)))


def fetch(tree):
  """Host (numpy) copies of arrays, also of those that span other processes' devices. Collective in
  a multi-host run: every process must call it."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
  return jax.tree.map(get, tree)
