"""The critic objectives over a batch's logits, each by its paper's name: InfoNCE (Stable Contrastive RL),
symmetric InfoNCE, binary NCE and the logsumexp penalty (original CRL)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise InfoNCE: cross-entropy of each row of ``[..., B, B]`` logits (softmax over goals)
    against its diagonal, averaged over rows."""
    return (torch.logsumexp(logits, dim=-1) - logits.diagonal(dim1=-2, dim2=-1)).mean(-1)


def symmetric_infonce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean of the row-wise and the column-wise (softmax over state-actions) InfoNCE."""
    return 0.5 * (infonce_loss(logits) + infonce_loss(logits.transpose(-1, -2)))


def binary_nce_loss(logits: torch.Tensor, weight_negatives: bool = False) -> torch.Tensor:
    """Sigmoid binary cross-entropy over the B x B matrix: 1 on the diagonal, 0 off it.

    A positive costs BCE(x, 1) = softplus(-x), a negative BCE(x, 0) = softplus(x). The mean is over all
    B^2 entries (original CRL); with ``weight_negatives``, each negative weighs 1 / (B - 1) in that mean,
    so a row's negatives weigh as much as its positive (stable-CRL code). Written with softplus rather
    than against an identity matrix of labels: no B x B label or weight tensor is built.
    """
    batch = logits.shape[-1]
    diagonal = logits.diagonal(dim1=-2, dim2=-1)
    positives = F.softplus(-diagonal).sum(-1)
    negatives = F.softplus(logits).sum((-1, -2)) - F.softplus(diagonal).sum(-1)
    negative_weight = 1 / max(batch - 1, 1) if weight_negatives else 1.0
    return (positives + negative_weight * negatives) / batch**2


def logsumexp_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Mean of logsumexp(row)^2: keeps the logits from drifting by a per-row constant (original CRL)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean(-1)


CRITIC_LOSSES = {
    "infonce": infonce_loss,
    "symmetric_infonce": symmetric_infonce_loss,
    "binary_nce": binary_nce_loss,
}
