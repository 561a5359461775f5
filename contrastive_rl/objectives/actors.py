"""The actor objectives, each by its paper's name, over the critic's value ``q`` of the policy's actions
and the behaviour-cloning term ``bc`` = -log pi(a_data | s, g) (None when its weight is 0)."""
from __future__ import annotations

import torch

# Keeps the DDPG+BC normalisation finite when every Q is ~0 (OGBench's constant).
_MIN_ABS_Q = 1e-6


def contrastive_actor_loss(q: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor, bc: torch.Tensor | None,
                           bc_coef: float) -> torch.Tensor:
    """Stable Contrastive RL's actor: ``mean(alpha log pi(a|s,g) - q)``, mixed with behaviour cloning as
    ``bc_coef * BC + (1 - bc_coef) * actor``."""
    loss = (alpha.detach() * log_prob - q).mean()
    return loss if bc is None else bc_coef * bc + (1 - bc_coef) * loss


def ddpg_bc_actor_loss(q: torch.Tensor, bc: torch.Tensor | None, bc_coef: float) -> torch.Tensor:
    """OGBench's DDPG+BC actor: ``-mean(q) / stopgrad(mean |q|) + bc_coef * BC``."""
    loss = -q.mean() / (q.abs().mean().detach() + _MIN_ABS_Q)
    return loss if bc is None else loss + bc_coef * bc
