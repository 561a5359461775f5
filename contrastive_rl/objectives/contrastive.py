"""``ContrastiveLoss``: the critic and actor losses of contrastive goal-conditioned RL as a TorchRL
LossModule, the glue of the family's pieces.

The critic objectives over the batch's logits are in ``critics.py`` (InfoNCE, symmetric InfoNCE, binary
NCE), those that bootstrap in ``bootstrap.py`` (td, TD InfoNCE) and ``tmd.py`` (TMD); the energies
(``dot``, ``scaled_dot``, ``cosine``, ``l2``, ``mrn``, ``iqe``) in ``energies.py``; ``family.py`` maps
each critic loss's name to its class; the actor objectives, ``contrastive`` (the paper's) and
``ddpg_bc`` (OGBench's CRL), in ``actors.py``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from contrastive_rl.modules.models import ContrastiveCritic
from contrastive_rl.objectives.actors import contrastive_actor_loss, ddpg_bc_actor_loss
from contrastive_rl.objectives.critics import CRITIC_LOSSES, binary_nce_loss, logsumexp_penalty
from contrastive_rl.objectives.energies import ENERGIES, paired_energy, pairwise_energy

ACTOR_LOSSES = ("contrastive", "ddpg_bc")


class ContrastiveLoss(LossModule):
    """Contrastive critic and actor losses for goal-conditioned RL.

    The critic scores f(s_i, a_i, g_j) = energy(phi(s_i, a_i), psi(g_j)) for every pair in the batch; the
    goal of row i (a future achieved goal of the same episode) is the positive, the other rows' goals are
    the negatives. Each critic's loss (plus ``logsumexp_coef`` * logsumexp^2) is averaged over critics
    (as OGBench's ensemble; Adam's steps are all but blind to that factor).

    The ``td`` critic loss (C-learning) is ``TDContrastiveLoss``; ``make_contrastive_loss`` picks the
    class from the loss's name.

    The actor maximises the critic, min over critics, at its own action:
    ``alpha * log pi(a|s,g) - min_k f_k(s, a, g)``, a ~ pi reparameterised, mixed with behaviour cloning
    as ``bc_coef * BC + (1 - bc_coef) * actor`` where BC = -log pi(a_data | s, g). The critic's
    parameters are detached in that loss, so it never changes them. A fraction
    ``random_goal_fraction`` of the rows gives the actor the goal of the previous row instead of its own
    future goal. BC always reads a row's own goal, the one its data action aimed at: it is averaged over
    the rows that kept their goal, and when no row did (``random_goal_fraction=1``) the policy is
    evaluated once more, at every row's own goal, for BC alone.

    With ``actor_loss="ddpg_bc"`` (OGBench's CRL) the actor loss is instead
    ``-Q / stopgrad(mean |Q|) + bc_coef * BC`` with Q = min_k f_k(s, a, g), at the policy's mode when its
    std is fixed (``ddpg_at_mode``), at a reparameterised sample otherwise; no entropy term. With
    ``separate_actor_goals`` the actor's goals are the batch's ``actor_goal`` entry (OGBench's uniform
    future goal) instead of the critic's.

    Args:
        actor_network: a probabilistic actor reading ``observation`` and ``goal``.
        critic_network: the contrastive critic.
        contrastive: critic loss, one of ``CRITIC_LOSSES`` (for ``td``, see ``TDContrastiveLoss``).
        energy: one of ``ENERGIES``.
        temperature: divisor of the cosine energy.
        learn_temperature: make the temperature a trained parameter (cosine only).
        quasimetric_components: ``mrn``'s number of parts, ``iqe``'s group size (TMD's ``components``).
        weight_negatives: binary_nce's negatives weigh 1 / (B - 1) (stable-CRL code).
        logsumexp_coef: weight of the logsumexp^2 penalty (0 disables it; the original CRL uses 0.01).
        bc_coef: behaviour-cloning share of the actor loss.
        alpha_init: entropy coefficient (kept fixed unless ``auto_alpha``).
        auto_alpha: tune alpha so that the policy's entropy tracks ``target_entropy``.
        target_entropy: target for the auto-tuned alpha; ``"auto"`` is -action_dim.
        random_goal_fraction: share of the actor's rows that get another row's goal.
        actor_loss: one of ``ACTOR_LOSSES``.
        ddpg_at_mode: ``ddpg_bc`` scores the policy's mode (a fixed-std policy) rather than a sample.
        separate_actor_goals: the actor reads ``actor_goal`` rather than the critic's ``goal``.
        clip_actions: clip the policy's actions to the action bounds before the critic scores them (a
            policy whose mean is not bounded, as OGBench's).
        use_state: read the proprioceptive ``state`` key beside the (image) observation.
        gather_batch: data-parallel training: ``(tensor, dim) ->`` every rank's tensors concatenated
            along ``dim``, differentiable; the critic's logits then span the global batch.
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys the loss reads; change them with ``.set_keys(name=key)``.

        Attributes:
            observation: the state s. Defaults to ``"observation"``.
            action: the action a taken in s. Defaults to ``"action"``.
            goal: the goal g (the relabelled future goal in training batches). Defaults to
                ``"desired_goal"``.
            next_observation: s', read by the td loss. Defaults to ``("next", "observation")``.
            next_achieved_goal: the goal reached at s', the td loss's positive. Defaults to
                ``("next", "achieved_goal")``.
            state: proprioceptive state read beside an image observation (``use_state``). Defaults to
                ``"observation"``.
            next_state: the same at s'. Defaults to ``("next", "observation")``.
            actor_goal: the actor's goal with ``separate_actor_goals``. Defaults to ``"actor_goal"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        goal: NestedKey = "desired_goal"
        next_observation: NestedKey = ("next", "observation")
        next_achieved_goal: NestedKey = ("next", "achieved_goal")
        state: NestedKey = "observation"
        next_state: NestedKey = ("next", "observation")
        actor_goal: NestedKey = "actor_goal"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    loss_keys = ("loss_critic", "loss_actor", "loss_alpha")  # summed into the backward pass
    out_keys = [
        *loss_keys,
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
        contrastive: str = "infonce",
        energy: str = "dot",
        temperature: float = 1.0,
        learn_temperature: bool = False,
        quasimetric_components: int = 8,
        weight_negatives: bool = False,
        logsumexp_coef: float = 0.0,
        bc_coef: float = 0.0,
        alpha_init: float = 0.0,
        auto_alpha: bool = False,
        target_entropy: float | str = "auto",
        random_goal_fraction: float = 0.0,
        actor_loss: str = "contrastive",
        ddpg_at_mode: bool = False,
        separate_actor_goals: bool = False,
        clip_actions: bool = False,
        use_state: bool = False,
        gather_batch: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> None:
        if contrastive not in CRITIC_LOSSES:
            raise ValueError(f"unknown contrastive loss {contrastive!r}: use one of {', '.join(CRITIC_LOSSES)}")
        if energy not in ENERGIES:
            raise ValueError(f"unknown energy {energy!r}: use one of {', '.join(ENERGIES)}")
        if actor_loss not in ACTOR_LOSSES:
            raise ValueError(f"unknown actor loss {actor_loss!r}: use one of {', '.join(ACTOR_LOSSES)}")
        super().__init__()
        self.convert_to_functional(actor_network, "actor_network")
        self.convert_to_functional(critic_network, "critic_network", create_target_params=self.has_target_critic)
        self.contrastive = contrastive
        self.energy = energy
        self.weight_negatives = weight_negatives
        self.logsumexp_coef = logsumexp_coef
        self.bc_coef = bc_coef
        self.random_goal_fraction = random_goal_fraction
        self.actor_loss = actor_loss
        self.ddpg_at_mode = ddpg_at_mode
        self.separate_actor_goals = separate_actor_goals
        self.clip_actions = clip_actions
        self.use_state = use_state
        self.auto_alpha = auto_alpha
        device = next(critic_network.parameters()).device
        if target_entropy == "auto":
            target_entropy = -float(actor_network.spec["action"].shape[-1])
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy), device=device))
        if auto_alpha:
            self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha_init), device=device))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha_init), device=device))
        self.gather_batch = gather_batch
        log_temperature = torch.tensor(math.log(temperature), device=device)
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)
        self.quasimetric_components = quasimetric_components
        # The action bounds on the networks' device, made once: the update reads no host tensor.
        space = actor_network.spec["action"].space
        self.register_buffer("action_low", space.low.to(device, torch.float32), persistent=False)
        self.register_buffer("action_high", space.high.to(device, torch.float32), persistent=False)
        if energy == "iqe":  # IQE's mix of mean and max, learnt with the critic (TMD's alpha_raw)
            self.iqe_mix_logit = nn.Parameter(torch.zeros((), device=device))

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    has_target_critic = False

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = [self.tensor_keys.observation, self.tensor_keys.action, self.tensor_keys.goal]
        if self.separate_actor_goals:
            keys.append(self.tensor_keys.actor_goal)
        return keys + [self.tensor_keys.state] if self.use_state else keys

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp() if self.auto_alpha else self.fixed_alpha

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def critic_parameters(self) -> list[nn.Parameter]:
        """What the critic loss trains: the critic's weights and a learnt temperature."""
        params = list(self.critic_network_params.values(True, True))
        if isinstance(self.log_temperature, nn.Parameter):
            params.append(self.log_temperature)
        if self.energy == "iqe":
            params.append(self.iqe_mix_logit)
        return params

    def _energy_params(self, detach: bool = False) -> dict:
        """The energy's trained scalars (cosine's temperature, IQE's mix), detached for the actor."""
        params = {"temperature": self.temperature, "components": self.quasimetric_components}
        if self.energy == "iqe":
            params["iqe_mix"] = torch.sigmoid(self.iqe_mix_logit)
        return {k: v.detach() if detach and torch.is_tensor(v) else v for k, v in params.items()}

    def pairwise(self, x: torch.Tensor, y: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """``[..., B, B]``: this loss's energy of every row of x with every row of y."""
        return pairwise_energy(x, y, self.energy, **self._energy_params(detach))

    def paired(self, x: torch.Tensor, y: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """``[..., B]``: this loss's energy of row i of x with row i of y."""
        return paired_energy(x, y, self.energy, **self._energy_params(detach))

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        observation = tensordict.get(self.tensor_keys.observation)
        action = tensordict.get(self.tensor_keys.action)
        goal = tensordict.get(self.tensor_keys.goal)
        state = tensordict.get(self.tensor_keys.state) if self.use_state else None

        with self.critic_network_params.to_module(self.critic_network):
            state_action_repr, goal_repr = self.critic_network(observation, action, goal, state)
        logits = self.pairwise(*self._global_batch(state_action_repr, goal_repr))
        loss_critic = self.critic_loss(tensordict, logits, state_action_repr, goal_repr)
        if self.logsumexp_coef:
            loss_critic = loss_critic + self.logsumexp_coef * logsumexp_penalty(logits)

        if self.separate_actor_goals:
            actor_goal = tensordict.get(self.tensor_keys.actor_goal)
            loss_actor, log_prob = self._actor_loss(observation, state, action, actor_goal)
        else:
            loss_actor, log_prob = self._actor_loss(observation, state, action, goal, goal_repr.detach())
        if self.auto_alpha:
            loss_alpha = -self.log_alpha * (log_prob.detach() + self.target_entropy).mean()
        else:
            loss_alpha = torch.zeros((), device=logits.device)

        with torch.no_grad():
            diagonal = logits.diagonal(dim1=-2, dim2=-1)
            batch = logits.shape[-1]
            accuracy = (diagonal >= logits.amax(-1)).float().mean()  # the positive scores highest in its row
            negative = (logits.sum((-1, -2)) - diagonal.sum(-1)) / max(batch * (batch - 1), 1)
        return TensorDict(
            loss_critic=loss_critic.mean(),
            loss_actor=loss_actor,
            loss_alpha=loss_alpha,
            alpha=self.alpha.detach(),
            entropy=-log_prob.detach().mean(),
            logits_accuracy=accuracy,
            logits_positive=diagonal.mean(),
            logits_negative=negative.mean(),
        )

    def critic_loss(self, tensordict, logits, state_action_repr, goal_repr) -> torch.Tensor:
        """``[num_critics]``: each critic's loss over its ``[B, B]`` logits."""
        if self.contrastive == "binary_nce":
            return binary_nce_loss(logits, self.weight_negatives)
        return CRITIC_LOSSES[self.contrastive](logits)

    def _global_batch(self, state_action_repr: torch.Tensor, goal_repr: torch.Tensor):
        """Under data-parallel training, every rank's representations, so that the logits are the
        global batch's (global B x global B, all negatives); else this batch's."""
        if self.gather_batch is None:
            return state_action_repr, goal_repr
        return self.gather_batch(state_action_repr, 1), self.gather_batch(goal_repr, 1)

    def _actor_input(self, observation: torch.Tensor, goal: torch.Tensor, state: torch.Tensor | None = None):
        actor_input = TensorDict(
            {self.tensor_keys.observation: observation, self.tensor_keys.goal: goal},
            batch_size=observation.shape[:1],
        )
        if state is not None:
            actor_input.set(self.tensor_keys.state, state)
        return actor_input

    def _actor_goals(self, goal: torch.Tensor, goal_repr: torch.Tensor | None):
        """Give the first ``random_goal_fraction`` of the rows the goal of the previous row."""
        num_random = round(self.random_goal_fraction * goal.shape[0])
        if num_random == 0:
            return goal, goal_repr, 0
        goal = torch.cat([goal.roll(1, 0)[:num_random], goal[num_random:]])
        if goal_repr is not None:
            goal_repr = torch.cat([goal_repr.roll(1, 1)[:, :num_random], goal_repr[:, num_random:]], 1)
        return goal, goal_repr, num_random

    def _actor_loss(self, observation, state, data_action, own_goal, own_goal_repr=None):
        """The actor loss and the log-probability of the actions it scored; ``own_goal_repr`` is psi of
        ``own_goal`` when the critic loss has computed it already."""
        goal, goal_repr, num_random = self._actor_goals(own_goal, own_goal_repr)
        with self.actor_network_params.to_module(self.actor_network):
            dist = self.actor_network.get_dist(self._actor_input(observation, goal, state))
        ddpg_bc = self.actor_loss == "ddpg_bc"
        action = dist.mode if ddpg_bc and self.ddpg_at_mode else dist.rsample()
        log_prob = dist.log_prob(action)
        if self.clip_actions:
            action = self._clip_to_bounds(action)
        # Detached critic parameters: the gradient reaches the action, never the critic. Without
        # preserve_module_state=False, to_module wraps them back into Parameters that require grad,
        # and autograd computes (then drops) every weight gradient of phi: ~7% of a paper-size update.
        detached_critic = self.critic_network_params.detach()
        with detached_critic.to_module(self.critic_network, preserve_module_state=False):
            if goal_repr is None:
                goal_repr = self.critic_network.encode_goal(goal)
            state_action_repr = self.critic_network.encode_state_action(observation, action, state)
        q = self.actor_q(state_action_repr, goal_repr)
        bc = self._bc_loss(dist, observation, state, data_action, own_goal, num_random) if self.bc_coef else None
        if ddpg_bc:
            return ddpg_bc_actor_loss(q, bc, self.bc_coef), log_prob
        return contrastive_actor_loss(q, log_prob, self.alpha, bc, self.bc_coef), log_prob

    def actor_q(self, state_action_repr: torch.Tensor, goal_repr: torch.Tensor) -> torch.Tensor:
        """``[B]``: the value the actor maximises at its actions, min over critics of f(s_i, a_i, g_i)."""
        return self.paired(state_action_repr, goal_repr, detach=True).min(0).values

    def _bc_loss(self, dist, observation, state, data_action, own_goal, num_random) -> torch.Tensor:
        """-log pi(a_data | s, g) over the rows that kept their own goal (``dist`` is the policy at the
        actor's goals, the first ``num_random`` rows of which are another row's)."""
        data_action = self._inside_support(data_action)
        if num_random < len(data_action):
            return -dist.log_prob(data_action)[num_random:].mean()
        with self.actor_network_params.to_module(self.actor_network):
            own_goal_dist = self.actor_network.get_dist(self._actor_input(observation, own_goal, state))
        return -own_goal_dist.log_prob(data_action).mean()

    def _clip_to_bounds(self, action: torch.Tensor) -> torch.Tensor:
        return torch.clamp(action, self.action_low, self.action_high)

    def _inside_support(self, action: torch.Tensor) -> torch.Tensor:
        """Pull data actions off the bounds, where a tanh policy's log-density is infinite."""
        margin = 1e-4 * (self.action_high - self.action_low)
        return torch.maximum(torch.minimum(action, self.action_high - margin), self.action_low + margin)


