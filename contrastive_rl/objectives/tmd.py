"""Temporal Metric Distillation (Myers, Zheng, Eysenbach, Levine, arXiv 2509.20478)."""
from __future__ import annotations

import math

import torch
from tensordict.utils import NestedKey

from contrastive_rl.objectives.contrastive import ContrastiveLoss
from contrastive_rl.objectives.critics import infonce_loss
from contrastive_rl.objectives.energies import QUASIMETRIC_ENERGIES


class TMDLoss(ContrastiveLoss):
    """Temporal Metric Distillation (Myers, Zheng, Eysenbach, Levine, arXiv 2509.20478), the ``tmd`` critic
    loss, as its authors' code (``impls/agents/tmd.py``) writes it.

    d(x, y) is the energy's quasimetric (``mrn`` or ``iqe``); psi reads goals and states alike, so goals
    must be full observations. Per critic, ``NCE + invariance + zeta * backup``:

    - NCE: backward InfoNCE, for each goal g_j a softmax over the batch's (s_i, a_i), on
      ``-d(phi(s_i, a_i), psi(g_j)) / sqrt(dim)``;
    - invariance: ``mean_i d(psi(s_i), phi(s_i, a_i))``, the action-invariance term;
    - backup: with ``delta_ij = d(phi(s_i, a_i), psi(g_j)) - sg[d(psi(s'_i), psi(g_j))]``, the LINEX-style
      divergence ``gamma exp(delta_ij) - d_ij`` where ``delta_ij <= clip``, ``delta_ij`` above it; each
      row mixes its off-diagonal pairs (s, g ~ p(s) p(g)) and its diagonal one (s, g ~ p(s, g)) as
      ``(1 - diagonal_weight) div_ij + diagonal_weight div_ii``; mean over pairs.

    The actor (``ddpg_bc``) maximises Q = -d(phi(s, pi(s, g)), psi(g)).

    Args:
        gamma: discount of the backup.
        zeta: weight of the backup term.
        clip: the LINEX divergence's clip t.
        diagonal_weight: the diagonal pairs' share of the backup.
        other keyword arguments: as ``ContrastiveLoss``'s.
    """

    def __init__(self, actor_network, critic_network, *, gamma: float = 0.99, zeta: float = 0.05, clip: float = 3.0,
                 diagonal_weight: float = 0.5, **kwargs) -> None:
        super().__init__(actor_network, critic_network, **kwargs)
        if self.energy not in QUASIMETRIC_ENERGIES:
            raise ValueError(f"tmd needs a quasimetric energy ({', '.join(QUASIMETRIC_ENERGIES)}), not {self.energy!r}")
        self.contrastive = "tmd"
        self.gamma = gamma
        self.zeta = zeta
        self.clip = clip
        self.diagonal_weight = diagonal_weight

    @property
    def in_keys(self) -> list[NestedKey]:
        return super().in_keys + [self.tensor_keys.next_achieved_goal]

    def critic_loss(self, tensordict, logits, state_action_repr, goal_repr) -> torch.Tensor:
        distance = -logits
        nce = infonce_loss(logits.transpose(-1, -2) / math.sqrt(state_action_repr.shape[-1]))
        with self.critic_network_params.to_module(self.critic_network):
            state_repr = self.critic_network.encode_goal(tensordict.get(self.tensor_keys.observation))
            with torch.no_grad():  # the backup's target d(s', g)
                next_state_repr = self.critic_network.encode_goal(tensordict.get(self.tensor_keys.next_achieved_goal))
                next_distance = -self.pairwise(next_state_repr, goal_repr)
        invariance = -self.paired(state_repr, state_action_repr).mean(-1)
        return nce + invariance + self.zeta * self.linex_backup(distance, next_distance)

    def linex_backup(self, distance: torch.Tensor, next_distance: torch.Tensor) -> torch.Tensor:
        """``[..., B, B] -> [...]``: the clipped LINEX divergence between d(s, a, g) and d(s', g)."""
        delta = distance - next_distance
        above = delta > self.clip
        divergence = torch.where(above, delta, self.gamma * torch.exp(delta.clamp(max=self.clip)) - distance)
        diagonal = divergence.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
        mixed = (1 - self.diagonal_weight) * divergence + self.diagonal_weight * diagonal
        return mixed.mean((-1, -2))
