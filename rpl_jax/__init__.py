"""rpl_jax: Relay Policy Learning as pure JAX functions over pytrees.

The library reaches the kitchen only through `envs.kitchen`'s reset/step interface. Its modules
(relabeling, networks, rollout, losses, NPG, training steps, data, evaluation, checkpoints) land with
the issues that deliver them; see ../shared/DESIGN.md section 2 for the map.
"""
