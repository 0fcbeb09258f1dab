"""The training and evaluation engine: trainer, evaluation, checkpoints, torchrun support."""
