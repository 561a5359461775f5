"""The run's machinery: the config and its checks, the gradient update, checkpoints, progress, stopping,
evaluation, data-parallel helpers and value maps (as torchrl/trainers)."""
