"""Critic and actor losses of contrastive goal-conditioned RL as a TorchRL LossModule.

Critic losses: ``infonce`` (Stable Contrastive RL, default), ``symmetric_infonce``, ``binary_nce``
(original CRL), ``td`` (C-learning, the released stable-CRL code's default), ``td_infonce`` (TD InfoNCE)
and ``tmd`` (Temporal Metric Distillation). Energies: ``dot``, ``scaled_dot`` (OGBench's CRL),
``cosine``, ``l2`` and the quasimetrics ``mrn`` and ``iqe``. Actor losses: ``contrastive`` (the
paper's) and ``ddpg_bc`` (OGBench's CRL).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from contrastive_rl.modules.models import ContrastiveCritic

CONTRASTIVE_LOSSES = ("infonce", "symmetric_infonce", "binary_nce", "td", "td_infonce", "tmd")
ENERGIES = ("dot", "scaled_dot", "cosine", "l2", "mrn", "iqe")
QUASIMETRIC_ENERGIES = ("mrn", "iqe")
ACTOR_LOSSES = ("contrastive", "ddpg_bc")
# Keeps the DDPG+BC normalisation finite when every Q is ~0 (OGBench's constant).
_MIN_ABS_Q = 1e-6
# Keeps sqrt differentiable where two representations coincide.
_MIN_SQUARED_DISTANCE = 1e-12
_MRN_EPS = 1e-6  # TMD's code


def in_float32(energy_fn: Callable) -> Callable:
    """Compute an energy in float32, also when the networks run under bf16 autocast."""

    @functools.wraps(energy_fn)
    def energy_in_float32(x: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return energy_fn(x.float(), y.float(), *args, **kwargs)

    return energy_in_float32


class PairwiseMRN(torch.autograd.Function):
    """``[..., K, h, B] x [..., K, h, B]`` (the parts' max halves, coordinate-major) and ``[..., K, B, m]`` x
    ``[..., K, B, m]`` (their L2 halves) ``-> [..., B, B]``: the MRN distance of every pair, the mean over
    the K parts of relu(max_c (x[c, i] - y[c, j])) + sqrt(|x_i - y_j|^2 + eps).

    Written by hand: autograd would keep the ``h x B x B`` difference for the max's backward and build
    its mask and product in new tensors, and run the L2 half as a chain of ``K x B x B`` passes. Here the
    max walks the pairs a block of rows at a time, small enough to stay in a core's cache through its
    chain of passes, its backward recomputes the difference and turns it into the gradient in place, and
    the L2 half is one ``baddbmm`` forward and two matrix products backward.
    """

    @staticmethod
    def forward(ctx, x_max: torch.Tensor, y_max: torch.Tensor, x_l2: torch.Tensor, y_l2: torch.Tensor) -> torch.Tensor:
        x_planes, y_planes = x_max.flatten(0, -3), y_max.flatten(0, -3)  # [N, h, B]
        best = x_max.new_empty(x_planes.shape[0], x_max.shape[-1], y_max.shape[-1])
        for plane, rows in _cache_sized_blocks(x_planes.shape, y_max.shape[-1]):
            differences = x_planes[plane, :, rows].unsqueeze(-1) - y_planes[plane].unsqueeze(-2)
            torch.amax(differences, -3, out=best[plane, rows])
        squared_norms = x_l2.pow(2).sum(-1).unsqueeze(-1) + y_l2.pow(2).sum(-1).unsqueeze(-2)
        root = torch.baddbmm(squared_norms.flatten(0, -3), x_l2.flatten(0, -3), y_l2.flatten(0, -3).transpose(-1, -2),
                             alpha=-2)
        root = root.view(squared_norms.shape).clamp_min_(0).add_(_MRN_EPS).sqrt_()
        best = best.view(root.shape)
        ctx.save_for_backward(x_max, y_max, x_l2, y_l2, best, root)
        return best.clamp_min(0).add_(root).mean(-3)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_max, y_max, x_l2, y_l2, best, root = ctx.saved_tensors
        grad = grad.unsqueeze(-3) / best.shape[-3]  # the mean over parts
        x_planes, y_planes, best_planes = x_max.flatten(0, -3), y_max.flatten(0, -3), best.flatten(0, -3)
        grad_residual = torch.where(best > 0, grad, 0).flatten(0, -3)
        grad_x_max, grad_y_max = torch.empty_like(x_planes), torch.zeros_like(y_planes)
        for plane, rows in _cache_sized_blocks(x_planes.shape, y_max.shape[-1]):
            # 1 where a coordinate gives the maximum, else 0, built in place in the recomputed difference.
            share = x_planes[plane, :, rows].unsqueeze(-1) - y_planes[plane].unsqueeze(-2)
            share.sub_(best_planes[plane, rows].unsqueeze(-3)).sign_().add_(1)
            share.mul_(grad_residual[plane, rows].unsqueeze(-3))
            torch.sum(share, -1, out=grad_x_max[plane, :, rows])
            grad_y_max[plane].add_(share.sum(-2))
        # d sqrt(|x_i - y_j|^2) = (x_i - y_j) / root_ij: row and column sums against the other side's rows.
        weight = grad / root
        grad_x_l2 = x_l2 * weight.sum(-1).unsqueeze(-1) - weight @ y_l2
        grad_y_l2 = y_l2 * weight.sum(-2).unsqueeze(-1) - weight.transpose(-1, -2) @ x_l2
        return grad_x_max.view(x_max.shape), -grad_y_max.view(y_max.shape), grad_x_l2, grad_y_l2


_CACHE_BLOCK_FLOATS = 2**18  # 1 MiB of float32, within a core's L2 cache


def _cache_sized_blocks(planes_shape: torch.Size, columns: int):
    """``(plane, rows)`` blocks of ``[N, h, B]`` planes against ``columns`` columns, each block's
    ``h x rows x columns`` difference within ``_CACHE_BLOCK_FLOATS``."""
    num_planes, coordinates, num_rows = planes_shape
    block = max(1, _CACHE_BLOCK_FLOATS // max(coordinates * columns, 1))
    for plane in range(num_planes):
        for start in range(0, num_rows, block):
            yield plane, slice(start, start + block)


def mrn_distance(x: torch.Tensor, y: torch.Tensor, components: int = 8, pairwise: bool = False) -> torch.Tensor:
    """Metric Residual Network distance (Liu, Touati, Zhang, Ross, Levine, ICML 2023), as TMD's code
    writes it: the representation is cut into ``components`` equal parts; in each, the max over its
    first half of relu(x - y) (the asymmetric residual) plus the L2 norm of the difference over its
    second half; the mean over parts. ``d(x, y)`` is a quasimetric: d(x, x) = 0, the triangle
    inequality holds, d(x, y) != d(y, x) in general.

    ``[..., B, d] x [..., B, d] -> [..., B]`` (row i with row i), or ``[..., B, B]`` with ``pairwise``
    (every row of x with every row of y), by ``PairwiseMRN``: the L2 halves from |x|^2 + |y|^2 - 2 x y^T,
    the residual's max across whole rows of ``[B, B]`` planes (over a trailing dimension of a few
    coordinates, the same max and its backward run several times slower).
    """
    x, y = x.unflatten(-1, (components, -1)), y.unflatten(-1, (components, -1))
    half = x.shape[-1] // 2
    if not pairwise:
        residual = (x[..., :half] - y[..., :half]).amax(-1).relu()
        squared = (x[..., half:] - y[..., half:]).pow(2).sum(-1)
        return (residual + (squared + _MRN_EPS).sqrt()).mean(-1)
    x, y = x.movedim(-2, -3), y.movedim(-2, -3)  # [..., parts, B, part size]
    x_max = x[..., :half].transpose(-1, -2).contiguous()  # [..., parts, d/2K, B]
    y_max = y[..., :half].transpose(-1, -2).contiguous()
    return _pairwise_mrn(x_max, y_max, x[..., half:].contiguous(), y[..., half:].contiguous())


# Run as written under torch.compile too: traced, its loop of blocks unrolls into slower kernels.
_pairwise_mrn = torch.compiler.disable(PairwiseMRN.apply)


def iqe_distance(x: torch.Tensor, y: torch.Tensor, mix: torch.Tensor | float, group_size: int = 8,
                 pairwise: bool = False) -> torch.Tensor:
    """Interval Quasimetric Embedding distance (Wang and Isola, 2022; the distance QRL learns), as TMD's
    code writes it: the representation is cut into groups of ``group_size``; a group's distance is the
    length of the union of the intervals [x_k, y_k] over its coordinates with x_k < y_k; the result mixes
    the mean and the max over groups, ``mix * mean + (1 - mix) * max`` (``mix`` = sigmoid of a learnt
    scalar). Shapes as ``mrn_distance``; pairwise, it sorts a B x B x 2d tensor.
    """
    x, y = x.unflatten(-1, (-1, group_size)), y.unflatten(-1, (-1, group_size))
    if pairwise:
        x, y = x.unsqueeze(-3), y.unsqueeze(-4)
    x, y = torch.broadcast_tensors(x, y)
    opens = x < y  # coordinates whose interval is not empty
    endpoints, order = torch.sort(torch.cat([x, y], -1), dim=-1)
    # Walking the sorted endpoints: an x of an open interval starts coverage (-1), its y ends it (+1).
    step = torch.where(order < group_size, -1, 1) * opens.gather(-1, order % group_size)
    covered = (step.cumsum(-1) < 0).to(endpoints.dtype)
    change = torch.cat([covered[..., :1], covered[..., 1:] - covered[..., :-1]], -1)
    lengths = -(endpoints * change).sum(-1)
    return mix * lengths.mean(-1) + (1 - mix) * lengths.amax(-1)


@in_float32
def pairwise_energy(x: torch.Tensor, y: torch.Tensor, energy: str, temperature: torch.Tensor | float = 1.0,
                    components: int = 8, iqe_mix: torch.Tensor | float = 0.5):
    """``[..., B, d] x [..., B, d] -> [..., B, B]``: the energy of every row of x with every row of y.

    ``scaled_dot`` divides the dot product by sqrt(d); ``cosine`` normalises each sample's representation
    and divides by ``temperature``; ``l2`` is the negative Euclidean distance, from |x|^2 + |y|^2 - 2 x y^T
    (a B x B x d difference would cost B times the memory); ``mrn`` and ``iqe`` are the negative
    quasimetric distances ``mrn_distance`` (``components`` parts) and ``iqe_distance`` (groups of
    ``components``, mixed by ``iqe_mix``).
    """
    if energy == "dot":
        return x @ y.transpose(-1, -2)
    if energy == "scaled_dot":
        return x @ y.transpose(-1, -2) / math.sqrt(x.shape[-1])
    if energy == "cosine":
        return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2) / temperature
    if energy == "l2":
        squared = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-1, -2)
        return -squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
    if energy == "mrn":
        return -mrn_distance(x, y, components, pairwise=True)
    if energy == "iqe":
        return -iqe_distance(x, y, iqe_mix, components, pairwise=True)
    raise ValueError(f"unknown energy {energy!r}: use one of {', '.join(ENERGIES)}")


@in_float32
def paired_energy(x: torch.Tensor, y: torch.Tensor, energy: str, temperature: torch.Tensor | float = 1.0,
                  components: int = 8, iqe_mix: torch.Tensor | float = 0.5):
    """``[..., B, d] x [..., B, d] -> [..., B]``: the energy of row i of x with row i of y."""
    if energy == "dot":
        return (x * y).sum(-1)
    if energy == "scaled_dot":
        return (x * y).sum(-1) / math.sqrt(x.shape[-1])
    if energy == "cosine":
        return (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1) / temperature
    if energy == "l2":
        return -(x - y).pow(2).sum(-1).clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
    if energy == "mrn":
        return -mrn_distance(x, y, components)
    if energy == "iqe":
        return -iqe_distance(x, y, iqe_mix, components)
    raise ValueError(f"unknown energy {energy!r}: use one of {', '.join(ENERGIES)}")


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
        if ddpg_bc:
            loss_actor = -q.mean() / (q.abs().mean().detach() + _MIN_ABS_Q)
            if self.bc_coef:
                loss_bc = self._bc_loss(dist, observation, state, data_action, own_goal, num_random)
                loss_actor = loss_actor + self.bc_coef * loss_bc
            return loss_actor, log_prob
        loss_actor = (self.alpha.detach() * log_prob - q).mean()
        if self.bc_coef:
            loss_bc = self._bc_loss(dist, observation, state, data_action, own_goal, num_random)
            loss_actor = self.bc_coef * loss_bc + (1 - self.bc_coef) * loss_actor
        return loss_actor, log_prob

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
