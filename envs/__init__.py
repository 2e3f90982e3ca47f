"""Simulated environments. They know nothing of `rpl_jax`."""
