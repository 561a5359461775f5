"""Critics that bootstrap from target critics at the next state: the td loss (C-learning, the released
stable-CRL code's default) and TD InfoNCE (Zheng, Salakhutdinov, Eysenbach, ICLR 2024)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tensordict.utils import NestedKey

from contrastive_rl.objectives.contrastive import ContrastiveLoss
from contrastive_rl.objectives.critics import infonce_loss


class NextStateBootstrapLoss(ContrastiveLoss):
    """The base of critic losses that read the next state and bootstrap from target critics there
    (``td``, ``td_infonce``). Each row is paired with its own batch's goals, so data-parallel ranks
    gather nothing."""

    has_target_critic = True

    def __init__(self, actor_network, critic_network, *, gamma: float = 0.99, **kwargs) -> None:
        super().__init__(actor_network, critic_network, **kwargs)
        self.gamma = gamma

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = super().in_keys + [self.tensor_keys.next_observation, self.tensor_keys.next_achieved_goal]
        return keys + [self.tensor_keys.next_state] if self.use_state else keys

    def _global_batch(self, state_action_repr: torch.Tensor, goal_repr: torch.Tensor):
        return state_action_repr, goal_repr

    @torch.no_grad()
    def _target_representations(self, next_observation, next_state, goal):
        """The target critics' phi(s', a') with a' ~ pi(s', g) and psi(g), without gradient."""
        with self.actor_network_params.to_module(self.actor_network):
            next_action = self.actor_network.get_dist(self._actor_input(next_observation, goal, next_state)).sample()
        if self.clip_actions:
            next_action = self._clip_to_bounds(next_action)
        with self.target_critic_network_params.to_module(self.critic_network):
            return (self.critic_network.encode_state_action(next_observation, next_action, next_state),
                    self.critic_network.encode_goal(goal))


class TDContrastiveLoss(NextStateBootstrapLoss):
    """The ``td`` critic loss (C-learning, the released stable-CRL code's default), with target critics.

    The positive is the next state's achieved goal; the negative is the next row's goal g_r, and it
    bootstraps: with p = sigmoid of the target critic at (s', a' ~ pi(s', g_r), g_r), min over critics,
    and w = clip(p / (1 - p), 0, max_importance_weight),
    loss = (1 - gamma) BCE(f(s, a, s'), 1) + gamma w BCE(f(s, a, g_r), 1) + BCE(f(s, a, g_r), 0).

    Args:
        gamma: discount of the bootstrap.
        max_importance_weight: clip of the importance weight w.
        other keyword arguments: as ``ContrastiveLoss``'s.
    """

    def __init__(self, actor_network, critic_network, *, max_importance_weight: float = 20.0, **kwargs) -> None:
        super().__init__(actor_network, critic_network, **kwargs)
        self.contrastive = "td"
        self.max_importance_weight = max_importance_weight

    def critic_loss(self, tensordict, logits, state_action_repr, goal_repr) -> torch.Tensor:
        goal = tensordict.get(self.tensor_keys.goal)
        next_observation = tensordict.get(self.tensor_keys.next_observation)
        next_state = tensordict.get(self.tensor_keys.next_state) if self.use_state else None
        next_goal = tensordict.get(self.tensor_keys.next_achieved_goal)
        random_goal = goal.roll(-1, 0)
        with self.critic_network_params.to_module(self.critic_network):
            next_goal_repr = self.critic_network.encode_goal(next_goal)
        positive_logits = self.paired(state_action_repr, next_goal_repr)
        random_logits = self.paired(state_action_repr, goal_repr.roll(-1, 1))
        with torch.no_grad():
            target_logits = self.paired(*self._target_representations(next_observation, next_state, random_goal))
            probability = torch.sigmoid(target_logits).min(0).values
            weight = (probability / (1 - probability)).clamp(0, self.max_importance_weight)
        ones = torch.ones_like(positive_logits)
        bce = F.binary_cross_entropy_with_logits
        loss = (
            (1 - self.gamma) * bce(positive_logits, ones, reduction="none")
            + self.gamma * weight * bce(random_logits, ones, reduction="none")
            + bce(random_logits, torch.zeros_like(random_logits), reduction="none")
        )
        return loss.mean(-1)


class TDInfoNCELoss(NextStateBootstrapLoss):
    """TD InfoNCE (Zheng, Salakhutdinov, Eysenbach, ICLR 2024), the ``td_infonce`` critic loss, with target
    critics.

    With f_ij = f(s_i, a_i, g_j) over the batch's goals (for row i, the other rows' goals are draws from
    the goals' marginal), the loss of each row is
    ``(1 - gamma) CE(f_i with f_ii replaced by f(s_i, a_i, s'_i), i) + gamma CE(f_i, w_i)``:
    the next state is the positive of the first term; the second bootstraps with the soft labels
    ``w_ij = softmax_j min_k f_target_k(s'_i, a'_i, g_j)``, a'_i ~ pi(s'_i, g_i), all without gradient.
    The actor scores its actions by the log-ratio of ``actor_q``.

    Args:
        gamma: discount of the bootstrap.
        other keyword arguments: as ``ContrastiveLoss``'s.
    """

    def __init__(self, actor_network, critic_network, **kwargs) -> None:
        super().__init__(actor_network, critic_network, **kwargs)
        self.contrastive = "td_infonce"

    def actor_q(self, state_action_repr: torch.Tensor, goal_repr: torch.Tensor) -> torch.Tensor:
        """The log-ratio ``f_ii - logsumexp_j f_ij + log B`` over the actor's batch of goals (min over
        critics of f), as TD InfoNCE's code scores actions: the row-wise softmax of the critic loss leaves
        each f(s, a, .) an additive constant free, which the raw f_ii would let the actor chase."""
        logits = self.pairwise(state_action_repr, goal_repr, detach=True).min(0).values
        return logits.diagonal() - torch.logsumexp(logits, -1) + math.log(logits.shape[-1])

    def critic_loss(self, tensordict, logits, state_action_repr, goal_repr) -> torch.Tensor:
        goal = tensordict.get(self.tensor_keys.goal)
        next_observation = tensordict.get(self.tensor_keys.next_observation)
        next_state = tensordict.get(self.tensor_keys.next_state) if self.use_state else None
        with self.critic_network_params.to_module(self.critic_network):
            next_goal_repr = self.critic_network.encode_goal(tensordict.get(self.tensor_keys.next_achieved_goal))
        next_state_logits = torch.diagonal_scatter(
            logits, self.paired(state_action_repr, next_goal_repr), dim1=-2, dim2=-1
        )
        with torch.no_grad():
            # Row i: softmax_j of the target critics' min at (s'_i, a'_i ~ pi(s'_i, g_i), g_j).
            target_logits = self.pairwise(*self._target_representations(next_observation, next_state, goal))
            soft_labels = torch.softmax(target_logits.min(0).values, dim=-1)
        bootstrap = (torch.logsumexp(logits, -1) - (soft_labels * logits).sum(-1)).mean(-1)
        return (1 - self.gamma) * infonce_loss(next_state_logits) + self.gamma * bootstrap
