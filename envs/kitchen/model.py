"""The kitchen scene: an MJX-ready MjModel built at load time from gymnasium-robotics' assets.

The stock FrankaKitchen model has 124 collidable geoms (3,736 candidate pairs, several of them
cylinder-mesh and cylinder-box, which MJX-JAX cannot collide). We load the installed XML with
`mujoco.MjSpec`, switch every implicit collision off and add explicit `<pair>`s for what manipulation
needs: two finger-pad capsules and a hand capsule against the collision geoms of every movable part
(knobs, light switch, slide cabinet, hinge doors, microwave door, kettle), and four feet at the
corners of the kettle's base against the stove top and the floor. Nothing is copied from the
package: the XML and meshes are read in place.
"""

import dataclasses
import functools
import os

import mujoco
import numpy as np
from mujoco.mjx._src import collision_driver
from mujoco.mjx._src import types as mjx_types

# Robot colliders, in their body's frame. The pads cover the distal 5 cm of each finger, where the
# stock model has its stack of 12 capsules per finger; the hand capsule spans the palm along the
# finger axis, which points along (1, 1, 0)/sqrt(2) in panda0_link7's frame (stock hand mesh bounds:
# +-0.083 in x and y, z in [0.107, 0.173] above the flange).
_PAD_RADIUS = 0.0095
_ROBOT_COLLIDERS = (
    # name, body, fromto, radius
    ('left_pad', 'panda0_leftfinger', (0.0, 0.0095, 0.035, 0.0, 0.0095, 0.085), _PAD_RADIUS),
    ('right_pad', 'panda0_rightfinger', (0.0, -0.0095, 0.035, 0.0, -0.0095, 0.085), _PAD_RADIUS),
    ('hand', 'panda0_link7', (-0.06, -0.06, 0.14, 0.06, 0.06, 0.14), 0.03),
)
ROBOT_COLLIDER_NAMES = tuple(c[0] for c in _ROBOT_COLLIDERS)

# Bodies the robot manipulates; all of their stock collision geoms are kept, against every robot collider.
MOVABLE_BODIES = (
    'knob 1', 'knob 2', 'knob 3', 'knob 4', 'lightswitchroot', 'slidelink',
    'hingeleftdoor', 'hingerightdoor', 'microdoorroot', 'kettleroot',
)
# The kettle's base box (the geom that rests on the stove in the stock model) and its supports.
_KETTLE_BASE = ('kettleroot', mujoco.mjtGeom.mjGEOM_BOX)
_KETTLE_SUPPORTS = (('ovenroot', mujoco.mjtGeom.mjGEOM_BOX, (0.5, 0.625, 0.81)),)
_FOOT_RADIUS = 0.01
_FRICTION = [1.0, 1.0, 0.005, 0.0001, 0.0001]  # 2 sliding, torsional, 2 rolling (MuJoCo's defaults)
# Hand contacts: a torsional friction length of a finger pad's width (with 0.005 a grasped kettle pivoted
# about the line between the two pad contacts).
_GRIP_FRICTION = [1.0, 1.0, 0.02, 0.0001, 0.0001]  # torsional: a 2 cm finger pad

_INTEGRATORS = {
    'euler': mujoco.mjtIntegrator.mjINT_EULER,
    'implicitfast': mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
    'rk4': mujoco.mjtIntegrator.mjINT_RK4,
}
_SOLVERS = {'newton': mujoco.mjtSolver.mjSOL_NEWTON, 'cg': mujoco.mjtSolver.mjSOL_CG}

CONTROL_DT = 0.08  # FrankaKitchen-v1: dt 0.002 x frame_skip 40.


@dataclasses.dataclass(frozen=True)
class PhysicsConfig:
  """Solver and integrator settings. Defaults and their measured fidelity are in BUILD_NOTES.md."""
  timestep: float = 0.004
  substeps: int = 20
  integrator: str = 'implicitfast'  # 'euler' | 'implicitfast' | 'rk4'
  solver: str = 'newton'  # 'newton' | 'cg'
  iterations: int = 4
  ls_iterations: int = 8

  def __post_init__(self):
    if self.substeps < 1 or self.timestep <= 0:
      raise ValueError(f'substeps must be >= 1 and timestep > 0, got {self}.')
    if abs(self.timestep * self.substeps - CONTROL_DT) > 1e-9:
      raise ValueError(
          f'timestep * substeps must equal the {CONTROL_DT} s control period of FrankaKitchen-v1, '
          f'got {self.timestep} * {self.substeps} = {self.timestep * self.substeps}.')
    if self.integrator not in _INTEGRATORS:
      raise ValueError(f'unknown integrator {self.integrator!r}; choose from {sorted(_INTEGRATORS)}.')
    if self.solver not in _SOLVERS:
      raise ValueError(f'unknown solver {self.solver!r}; choose from {sorted(_SOLVERS)}.')


# The reference physics of FrankaKitchen-v1, on the stock model.
REFERENCE_PHYSICS = PhysicsConfig(timestep=0.002, substeps=40, integrator='euler', solver='newton',
                                  iterations=100, ls_iterations=50)

class UnsupportedPairError(ValueError):
  """A collision pair that MJX-JAX has no collision function for."""


def asset_path() -> str:
  """Path of the stock kitchen XML inside the installed gymnasium-robotics package."""
  import importlib.util
  found = importlib.util.find_spec('gymnasium_robotics')
  if found is None or not found.submodule_search_locations:
    raise ImportError('the kitchen assets come from the gymnasium-robotics package: pip install gymnasium-robotics')
  root = list(found.submodule_search_locations)[0]
  path = os.path.join(root, 'envs', 'assets', 'kitchen_franka', 'kitchen_assets', 'kitchen_env_model.xml')
  if not os.path.exists(path):
    raise FileNotFoundError(f'kitchen model not found at {path}; is gymnasium-robotics >= 1.2 installed?')
  return path


def stock_model() -> mujoco.MjModel:
  """The unmodified FrankaKitchen-v1 model (reference physics for fidelity checks)."""
  return mujoco.MjModel.from_xml_path(asset_path())


def _collision_geoms(body: mujoco.MjsBody) -> list:
  return [g for g in body.geoms if g.contype or g.conaffinity]


def _name_collision_geoms(spec: mujoco.MjSpec) -> dict[str, list[str]]:
  """Names the unnamed stock collision geoms of each movable body `<body>/col<i>`, cylinders replaced."""
  names = {}
  for body_name in MOVABLE_BODIES:
    geoms = _collision_geoms(spec.body(body_name))
    for i, geom in enumerate(geoms):
      geom.name = geom.name or f'{body_name}/col{i}'
      if geom.type == mujoco.mjtGeom.mjGEOM_CYLINDER:
        _replace_cylinder(geom)
    names[body_name] = [g.name for g in geoms]
  return names


def _replace_cylinder(geom: mujoco.MjsGeom) -> None:
  """MJX-JAX collides capsules with cylinders only through an iterative SDF solve (slow on every
  backend, and flagged there as not robust near edges), so each kept cylinder becomes a primitive
  with the same extent: a capsule of the same radius and overall length where it is longer than
  wide (handles, posts, the kettle spout), a box around it where it is a disc (knob plates)."""
  radius, half_length = geom.size[0], geom.size[1]
  if half_length > radius:
    geom.type = mujoco.mjtGeom.mjGEOM_CAPSULE
    geom.size = [radius, half_length - radius, 0]
  else:
    geom.type = mujoco.mjtGeom.mjGEOM_BOX
    geom.size = [radius, radius, half_length]


def _add_kettle_feet(kettle: mujoco.MjsBody, base: mujoco.MjsGeom) -> list[str]:
  """Four small spheres at the bottom corners of the kettle's base box; they, not the box, rest on the
  supports. MJX-JAX's box-box collider reports the resting kettle as one corner contact (repeated),
  where C MuJoCo finds two; the kettle then crept 3 mm in 4 s on MJX and 0.2 mm on C (BUILD_NOTES.md).
  Sphere-box and sphere-plane contacts are the same in both engines."""
  names = []
  for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
    offset = np.array([sx * (base.size[0] - _FOOT_RADIUS), sy * (base.size[1] - _FOOT_RADIUS),
                       -base.size[2] + _FOOT_RADIUS])
    names.append(f'kettle_foot{i}')
    kettle.add_geom(name=names[-1], type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[_FOOT_RADIUS, 0, 0],
                    pos=np.asarray(base.pos) + offset, contype=0, conaffinity=0, group=3, mass=0)
  return names


def _find_geom(spec, body_name, geom_type, size=None) -> mujoco.MjsGeom:
  matches = [g for g in _collision_geoms(spec.body(body_name)) if g.type == geom_type
             and (size is None or np.allclose(g.size, size))]
  if len(matches) != 1:
    raise ValueError(f'expected one {geom_type} collision geom in body {body_name!r}, found {len(matches)}; '
                     'the installed gymnasium-robotics kitchen assets differ from the ones this scene was built for.')
  return matches[0]


def build_spec(physics: PhysicsConfig = PhysicsConfig()) -> mujoco.MjSpec:
  """The edited kitchen spec, before compilation."""
  spec = mujoco.MjSpec.from_file(asset_path())
  base = _find_geom(spec, *_KETTLE_BASE)
  supports = [_find_geom(spec, *s) for s in _KETTLE_SUPPORTS]
  base.name = 'kettle_base'
  feet = _add_kettle_feet(spec.body(_KETTLE_BASE[0]), base)
  for i, geom in enumerate(supports):
    geom.name = f'kettle_support{i}'
  floor = spec.worldbody.geoms[0]
  if floor.type != mujoco.mjtGeom.mjGEOM_PLANE:
    raise ValueError('expected the kitchen floor plane as the first world geom.')
  floor.name = 'floor'
  targets = _name_collision_geoms(spec)

  for geom in spec.geoms:
    geom.contype = 0
    geom.conaffinity = 0

  for name, body_name, fromto, radius in _ROBOT_COLLIDERS:
    spec.body(body_name).add_geom(
        name=name, type=mujoco.mjtGeom.mjGEOM_CAPSULE, fromto=fromto, size=[radius, 0, 0],
        contype=0, conaffinity=0, group=3, mass=0, rgba=[0.9, 0.4, 0.1, 0.5])

  # Finger contacts: condim 4 (torsional friction), as the stock kettle class, so grasped knobs turn.
  for robot_geom in ROBOT_COLLIDER_NAMES:
    for body_name in MOVABLE_BODIES:
      for target in targets[body_name]:
        spec.add_pair(geomname1=robot_geom, geomname2=target, condim=4, friction=_GRIP_FRICTION)
  # The stock kettle_collision class's contact parameters.
  for foot in feet:
    for support in [g.name for g in supports] + ['floor']:
      spec.add_pair(geomname1=foot, geomname2=support, condim=4, friction=_FRICTION,
                    solimp=[0.8, 0.9, 0.01, 0.5, 2], margin=0.001)

  spec.option.timestep = physics.timestep
  spec.option.integrator = _INTEGRATORS[physics.integrator]
  spec.option.solver = _SOLVERS[physics.solver]
  spec.option.iterations = physics.iterations
  spec.option.ls_iterations = physics.ls_iterations
  # The stock <size njmax nconmax> was sized for 3,736 implicit pairs; MJX sizes its buffers itself.
  spec.njmax = -1
  spec.nconmax = -1
  return spec


def check_pairs_supported(model: mujoco.MjModel) -> None:
  """Raises UnsupportedPairError naming every pair MJX-JAX cannot collide."""
  bad = []
  for i in range(model.npair):
    g1, g2 = model.pair_geom1[i], model.pair_geom2[i]
    t1, t2 = mjx_types.GeomType(model.geom_type[g1]), mjx_types.GeomType(model.geom_type[g2])
    if not collision_driver.has_collision_fn(*sorted((t1, t2))):
      bad.append(f'{model.geom(g1).name or g1} ({t1.name.lower()}) - {model.geom(g2).name or g2} ({t2.name.lower()})')
  if bad:
    raise UnsupportedPairError('MJX-JAX has no collision function for these geom pairs: ' + '; '.join(bad))


@functools.lru_cache(maxsize=8)
def build_model(physics: PhysicsConfig = PhysicsConfig()) -> mujoco.MjModel:
  """The compiled kitchen model, checked for MJX-JAX support. Cached: treat it as read-only."""
  model = build_spec(physics).compile()
  if model.ngeom and (model.geom_contype.any() or model.geom_conaffinity.any()):
    raise AssertionError('implicit collisions left on')
  check_pairs_supported(model)
  return model



@functools.lru_cache(maxsize=1)
def franka_config() -> dict[str, np.ndarray]:
  """FrankaKitchen-v1's per-coordinate robot config, read from the installed franka_config.xml.

  Rows qpos0..qpos<N>: 'pos_bound' and 'vel_bound' ([N, 2]; v1 clips the commanded velocity and the
  position target of the 9 robot joints with these, not with the model's joint ranges) and
  'pos_noise_amp' and 'vel_noise_amp' ([N]; v1's observation-noise amplitudes).
  """
  import xml.etree.ElementTree as ElementTree
  path = os.path.join(os.path.dirname(os.path.dirname(asset_path())), 'franka_assets', 'franka_config.xml')
  rows = list(ElementTree.parse(path).getroot())
  if [r.tag for r in rows[:9]] != [f'qpos{i}' for i in range(9)]:
    raise ValueError(f'{path} does not start with rows qpos0..qpos8; unexpected gymnasium-robotics version.')
  values = lambda attr: np.array([[float(v) for v in r.get(attr).split()] for r in rows])
  return {'pos_bound': values('pos_bound'), 'vel_bound': values('vel_bound'),
          'pos_noise_amp': values('pos_noise_amp')[:, 0], 'vel_noise_amp': values('vel_noise_amp')[:, 0]}
