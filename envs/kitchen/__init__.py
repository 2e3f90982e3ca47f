"""The Franka kitchen scene on MJX, with a C MuJoCo backend for CPU hosts."""

from envs.kitchen.env import ACTION_DIM, KitchenConfig, KitchenEnv, State
from envs.kitchen.model import PhysicsConfig, UnsupportedPairError, build_model
