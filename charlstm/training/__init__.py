"""Training a model: the loop, the run it works on, sizing and presets, the learning-rate
schedule, the speed probe, several processes (torchrun), evaluation, and the events it reports.

Kept empty, so that the CLI can read the presets (``--help``) without importing torch.
"""
