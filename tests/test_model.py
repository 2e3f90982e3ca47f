"""The MJX-ready kitchen model: explicit pairs only, all supported by MJX-JAX, clear errors otherwise."""

import mujoco
import pytest

from envs.kitchen import model as kitchen_model


def test_only_explicit_supported_pairs():
  model = kitchen_model.build_model()
  assert not model.geom_contype.any() and not model.geom_conaffinity.any()
  names = {model.geom(model.pair_geom1[i]).name for i in range(model.npair)}
  names |= {model.geom(model.pair_geom2[i]).name for i in range(model.npair)}
  assert set(kitchen_model.ROBOT_COLLIDER_NAMES) <= names
  assert {'kettle_base', 'kettle_foot0', 'kettle_foot3', 'kettle_support0', 'floor'} <= names
  kitchen_model.check_pairs_supported(model)  # raises if not
  assert model.nq == 30 and model.nu == 9


def test_every_movable_body_touchable_by_every_robot_collider():
  model = kitchen_model.build_model()
  pairs = {(model.geom(model.pair_geom1[i]).name, model.body(model.geom_bodyid[model.pair_geom2[i]]).name)
           for i in range(model.npair)}
  for collider in kitchen_model.ROBOT_COLLIDER_NAMES:
    for body in kitchen_model.MOVABLE_BODIES:
      assert (collider, body) in pairs


def test_unsupported_pair_names_the_geoms():
  # A stock cylinder against a box: MJX-JAX has no cylinder-box collision function.
  stock = kitchen_model.stock_model()
  cylinder = next(g for g in range(stock.ngeom) if stock.geom_type[g] == mujoco.mjtGeom.mjGEOM_CYLINDER
                  and stock.body(stock.geom_bodyid[g]).name == 'counters' and stock.geom_conaffinity[g])
  spec = kitchen_model.build_spec()
  spec.geoms[cylinder].name = 'counter_cylinder'
  spec.add_pair(geomname1='kettle_base', geomname2='counter_cylinder')
  # MuJoCo's compiler may swap a pair's geoms; the message names both with their types either way.
  names = r'(kettle_base \(box\) - counter_cylinder \(cylinder\)|counter_cylinder \(cylinder\) - kettle_base \(box\))'
  with pytest.raises(kitchen_model.UnsupportedPairError, match=names):
    kitchen_model.check_pairs_supported(spec.compile())


def test_physics_config_settings_reach_the_model():
  config = kitchen_model.PhysicsConfig(timestep=0.002, substeps=40, integrator='euler', iterations=7)
  model = kitchen_model.build_model(config)
  assert model.opt.timestep == 0.002 and model.opt.iterations == 7
  assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER


@pytest.mark.parametrize('kwargs, match', [
    (dict(timestep=0.004, substeps=10), 'control period'),
    (dict(integrator='verlet'), 'unknown integrator'),
    (dict(solver='pgs'), 'unknown solver'),
    (dict(substeps=0), 'substeps'),
])
def test_bad_physics_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    kitchen_model.PhysicsConfig(**kwargs)
