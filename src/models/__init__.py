"""Attention modules, the shared encoder and the task LightningModules."""
