"""The loss module of a config's critic loss: the one place that maps each name to its class."""
from __future__ import annotations

from contrastive_rl.objectives.bootstrap import TDContrastiveLoss, TDInfoNCELoss
from contrastive_rl.objectives.contrastive import ContrastiveLoss
from contrastive_rl.objectives.tmd import TMDLoss

CONTRASTIVE_LOSSES = ("infonce", "symmetric_infonce", "binary_nce", "td", "td_infonce", "tmd")


def make_contrastive_loss(
    actor_network,
    critic_network,
    *,
    contrastive: str,
    gamma: float,
    max_importance_weight: float,
    tmd_zeta: float = 0.05,
    tmd_clip: float = 3.0,
    tmd_diagonal_weight: float = 0.5,
    **kwargs,
) -> ContrastiveLoss:
    """The loss module of the critic loss ``contrastive``, one of ``CONTRASTIVE_LOSSES``."""
    if contrastive == "td":
        return TDContrastiveLoss(
            actor_network, critic_network, gamma=gamma, max_importance_weight=max_importance_weight, **kwargs
        )
    if contrastive == "td_infonce":
        return TDInfoNCELoss(actor_network, critic_network, gamma=gamma, **kwargs)
    if contrastive == "tmd":
        return TMDLoss(actor_network, critic_network, gamma=gamma, zeta=tmd_zeta, clip=tmd_clip,
                       diagonal_weight=tmd_diagonal_weight, **kwargs)
    return ContrastiveLoss(actor_network, critic_network, contrastive=contrastive, **kwargs)
