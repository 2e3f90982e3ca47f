"""rpl_jax: Relay Policy Learning as pure JAX functions over pytrees.

The library reaches the kitchen only through `envs.kitchen`'s reset/step interface. `data` (the demo
dataset format) is here; relabeling, networks, rollout, losses, NPG, training steps, evaluation and
checkpoints land with the issues that deliver them (../shared/DESIGN.md section 2 has the map).
"""
