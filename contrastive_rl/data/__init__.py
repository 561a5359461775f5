"""Data: the future-goal replay buffer, Minari and OGBench datasets and their generators, batch
augmentation and data checks (as torchrl/data)."""
