"""InfoNCE critic and goal-conditioned actor losses of Stable Contrastive RL as a TorchRL LossModule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from contrastive_rl.models import ContrastiveCritic


def infonce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise InfoNCE: cross-entropy of each row of ``[..., B, B]`` logits against its diagonal."""
    labels = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[:-1])
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none").view(
        logits.shape[:-1]
    ).mean(-1)


def logsumexp_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Mean of logsumexp(row)^2: keeps the logits from drifting by a per-row constant (original CRL)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean(-1)


class ContrastiveLoss(LossModule):
    """Contrastive critic and actor losses for goal-conditioned RL.

    The critic scores f(s_i, a_i, g_j) = phi(s_i, a_i)^T psi(g_j) for every pair in the batch; the goal of
    row i (a future achieved goal of the same episode) is the positive, the other rows' goals are the
    negatives. Each critic's InfoNCE loss (plus ``logsumexp_coef`` * logsumexp^2) is summed over critics.

    The actor maximises the critic, min over critics, at its own action:
    ``alpha * log pi(a|s,g) - min_k f_k(s, a, g)`` with a ~ pi reparameterised. The critic's parameters
    are detached in that term, so the actor's loss never changes them. A fraction ``random_goal_fraction``
    of the rows gives the actor the goal of the previous row instead of its own future goal.

    Args:
        actor_network: a probabilistic actor reading ``observation`` and ``goal``.
        critic_network: the contrastive critic.
        logsumexp_coef: weight of the logsumexp^2 penalty (0 disables it; the original CRL uses 0.01).
        alpha_init: entropy coefficient (kept fixed unless ``auto_alpha``).
        auto_alpha: tune alpha so that the policy's entropy tracks ``target_entropy``.
        target_entropy: target for the auto-tuned alpha.
        random_goal_fraction: share of the actor's rows that get another row's goal.
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys the loss reads; change them with ``.set_keys(name=key)``.

        Attributes:
            observation: the state s. Defaults to ``"observation"``.
            action: the action a taken in s. Defaults to ``"action"``.
            goal: the goal g (the relabelled future goal in training batches). Defaults to
                ``"desired_goal"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        goal: NestedKey = "desired_goal"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = [
        "loss_critic",
        "loss_actor",
        "loss_alpha",
        "alpha",
        "entropy",
        "logits_accuracy",
        "logits_positive",
        "logits_negative",
    ]

    actor_network: ProbabilisticTensorDictSequential
    critic_network: ContrastiveCritic
    actor_network_params: TensorDictParams
    critic_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_critic_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        critic_network: ContrastiveCritic,
        *,
        logsumexp_coef: float = 0.0,
        alpha_init: float = 0.0,
        auto_alpha: bool = False,
        target_entropy: float = 0.0,
        random_goal_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.convert_to_functional(actor_network, "actor_network")
        self.convert_to_functional(critic_network, "critic_network")
        self.logsumexp_coef = logsumexp_coef
        self.random_goal_fraction = random_goal_fraction
        self.auto_alpha = auto_alpha
        device = next(critic_network.parameters()).device
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy), device=device))
        if auto_alpha:
            self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha_init), device=device))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha_init), device=device))

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action, self.tensor_keys.goal]

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp() if self.auto_alpha else self.fixed_alpha

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        observation = tensordict.get(self.tensor_keys.observation)
        action = tensordict.get(self.tensor_keys.action)
        goal = tensordict.get(self.tensor_keys.goal)

        with self.critic_network_params.to_module(self.critic_network):
            state_action_repr, goal_repr = self.critic_network(observation, action, goal)
        logits = state_action_repr @ goal_repr.transpose(-1, -2)
        loss_critic = infonce_loss(logits)
        if self.logsumexp_coef:
            loss_critic = loss_critic + self.logsumexp_coef * logsumexp_penalty(logits)

        loss_actor, log_prob = self._actor_loss(observation, goal, goal_repr.detach())
        if self.auto_alpha:
            loss_alpha = -self.log_alpha * (log_prob.detach() + self.target_entropy).mean()
        else:
            loss_alpha = torch.zeros((), device=logits.device)

        with torch.no_grad():
            diagonal = logits.diagonal(dim1=-2, dim2=-1)
            batch = logits.shape[-1]
            labels = torch.arange(batch, device=logits.device)
            accuracy = (logits.argmax(-1) == labels).float().mean()
            negative = (logits.sum((-1, -2)) - diagonal.sum(-1)) / max(batch * (batch - 1), 1)
        return TensorDict(
            loss_critic=loss_critic.sum(),
            loss_actor=loss_actor,
            loss_alpha=loss_alpha,
            alpha=self.alpha.detach(),
            entropy=-log_prob.detach().mean(),
            logits_accuracy=accuracy,
            logits_positive=diagonal.mean(),
            logits_negative=negative.mean(),
        )

    def _actor_goals(self, goal: torch.Tensor, goal_repr: torch.Tensor):
        """Give the first ``random_goal_fraction`` of the rows the goal of the previous row."""
        num_random = round(self.random_goal_fraction * goal.shape[0])
        if num_random == 0:
            return goal, goal_repr
        goal = torch.cat([goal.roll(1, 0)[:num_random], goal[num_random:]])
        goal_repr = torch.cat([goal_repr.roll(1, 1)[:, :num_random], goal_repr[:, num_random:]], 1)
        return goal, goal_repr

    def _actor_loss(self, observation, goal, goal_repr):
        goal, goal_repr = self._actor_goals(goal, goal_repr)
        actor_input = TensorDict(
            {self.tensor_keys.observation: observation, self.tensor_keys.goal: goal},
            batch_size=observation.shape[:-1],
        )
        with self.actor_network_params.to_module(self.actor_network):
            dist = self.actor_network.get_dist(actor_input)
        action = dist.rsample()
        log_prob = dist.log_prob(action)
        # Detached critic parameters: the gradient reaches the action, never the critic.
        with self.critic_network_params.detach().to_module(self.critic_network):
            state_action_repr = self.critic_network.encode_state_action(observation, action)
        critic_value = (state_action_repr * goal_repr).sum(-1).min(0).values
        loss_actor = (self.alpha.detach() * log_prob - critic_value).mean()
        return loss_actor, log_prob
