"""Networks: the contrastive critic, the policies and the image encoders (as torchrl/modules)."""
