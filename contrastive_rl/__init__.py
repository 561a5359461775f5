"""Building blocks of the Stable Contrastive RL example: goal environments, the future-goal replay
buffer, the contrastive critic and its loss."""
