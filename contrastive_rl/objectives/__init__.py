"""The losses: critic objectives, energies and actor objectives of the contrastive family (as
torchrl/objectives)."""
