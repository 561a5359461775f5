"""The contrastive critic f(s, a, g) = phi(s, a)^T psi(g) with the paper's stabilisers."""
from __future__ import annotations

import torch
from torch import nn
from torchrl.modules import MLP

COLD_INIT_SCALE = 1e-12
POLICIES = ("tanh_normal", "fixed_std_normal")
POLICY_MEANS = ("tanh", "clip")
INITS = ("torch", "ogbench")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
# OGBench's policy mean layer starts at 1e-2 times the variance of its other layers.
OGBENCH_FINAL_POLICY_SCALE = 1e-2


def ogbench_init_(mlp: nn.Module, final_scale: float = 1.0) -> nn.Module:
    """Initialise every Linear of ``mlp`` as OGBench's networks do (flax ``variance_scaling(scale, "fan_avg",
    "uniform")``, which is Glorot-uniform with gain sqrt(scale); zero biases), the last one with
    ``final_scale``."""
    linears = [module for module in mlp.modules() if isinstance(module, nn.Linear)]
    for index, linear in enumerate(linears):
        scale = final_scale if index == len(linears) - 1 else 1.0
        nn.init.xavier_uniform_(linear.weight, gain=scale**0.5)
        nn.init.zeros_(linear.bias)
    return mlp


class ActivationThenLayerNorm(nn.Module):
    """``activation`` then LayerNorm: one hidden block's tail in OGBench's MLP (Dense, activation,
    LayerNorm), which torchrl's MLP, normalising before its activation, cannot order itself."""

    def __init__(self, activation: str, normalized_shape: int, device=None) -> None:
        super().__init__()
        self.activation = ACTIVATIONS[activation]()
        self.norm = nn.LayerNorm(normalized_shape, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(x))


def hidden_layer_kwargs(hidden_dim: int, num_layers: int, activation: str, layer_norm: bool,
                        norm_after_activation: bool = False) -> dict:
    """torchrl ``MLP`` keyword arguments for hidden blocks of Linear, LayerNorm, ``activation`` (torchrl's
    order, the stable-CRL code's), or with ``norm_after_activation`` Linear, ``activation``, LayerNorm
    (OGBench's); no LayerNorm without ``layer_norm``."""
    if layer_norm and norm_after_activation:
        return {"activation_class": ActivationThenLayerNorm,
                "activation_kwargs": [{"activation": activation, "normalized_shape": hidden_dim}] * num_layers}
    return {"activation_class": ACTIVATIONS[activation],
            "norm_class": nn.LayerNorm if layer_norm else None,
            "norm_kwargs": [{"normalized_shape": hidden_dim}] * num_layers if layer_norm else None}


def make_encoder(
    in_features: int,
    out_features: int,
    *,
    hidden_dim: int,
    num_layers: int,
    use_layer_norm: bool,
    cold_init: bool,
    activation: str = "relu",
    init: str = "torch",
    norm_after_activation: bool = False,
    device: torch.device | str | None = None,
) -> MLP:
    """``num_layers`` hidden layers of ``hidden_dim`` units (Linear, LayerNorm, ``activation``; or Linear,
    ``activation``, LayerNorm with ``norm_after_activation``), then a linear output.

    ``init``: ``torch``'s default Linear initialisation or ``ogbench``'s (``ogbench_init_``). With
    ``cold_init`` the output layer then starts at U[-1e-12, 1e-12] with a zero bias, so every logit of
    the critic starts at ~0.
    """
    encoder = MLP(
        in_features=in_features,
        out_features=out_features,
        num_cells=[hidden_dim] * num_layers,
        **hidden_layer_kwargs(hidden_dim, num_layers, activation, use_layer_norm, norm_after_activation),
        device=device,
    )
    if init == "ogbench":
        ogbench_init_(encoder)
    if cold_init:
        output_layer = encoder[-1]
        nn.init.uniform_(output_layer.weight, -COLD_INIT_SCALE, COLD_INIT_SCALE)
        nn.init.zeros_(output_layer.bias)
    return encoder


class ContrastiveCritic(nn.Module):
    """``num_critics`` independent pairs of encoders phi(s, a) and psi(g).

    An ``encoder`` (the CNN, for images) maps observations and goals to features first; it is shared by
    phi and psi and by the critics, and ``observation_dim`` / ``goal_dim`` are then its output size.
    Every method returns a leading critic dimension: representations are ``[num_critics, B, embed_dim]``.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        goal_dim: int,
        *,
        embed_dim: int,
        hidden_dim: int,
        num_layers: int,
        use_layer_norm: bool,
        cold_init: bool,
        activation: str = "relu",
        init: str = "torch",
        norm_after_activation: bool = False,
        num_critics: int = 1,
        encoder: nn.Module | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        encoder_kwargs = dict(
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            use_layer_norm=use_layer_norm,
            cold_init=cold_init,
            activation=activation,
            init=init,
            norm_after_activation=norm_after_activation,
            device=device,
        )
        self.state_action_encoders = nn.ModuleList(
            make_encoder(observation_dim + action_dim, embed_dim, **encoder_kwargs)
            for _ in range(num_critics)
        )
        self.goal_encoders = nn.ModuleList(
            make_encoder(goal_dim, embed_dim, **encoder_kwargs) for _ in range(num_critics)
        )

    @property
    def num_critics(self) -> int:
        return len(self.goal_encoders)

    def encode_state_action(
        self, observation: torch.Tensor, action: torch.Tensor, state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """phi(s, a); ``state`` (proprioception beside an image) joins the encoder's features."""
        inputs = (self.encoder(observation), action) if state is None else (self.encoder(observation), state, action)
        return torch.stack([phi(*inputs) for phi in self.state_action_encoders])

    def encode_goal(self, goal: torch.Tensor) -> torch.Tensor:
        features = self.encoder(goal)
        return torch.stack([psi(features) for psi in self.goal_encoders])

    def forward(
        self, observation: torch.Tensor, action: torch.Tensor, goal: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_state_action(observation, action, state), self.encode_goal(goal)


class GoalConditionedNet(nn.Module):
    """``mlp(encoder(observation), encoder(goal)[, state])``: the policy's torso, with its image encoder.
    Its output is float32, so the policy's distribution is too when the networks run under bf16 autocast."""

    def __init__(self, mlp: nn.Module, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.mlp = mlp
        self.encoder = encoder if encoder is not None else nn.Identity()

    def forward(self, observation: torch.Tensor, goal: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        if state is None:
            return self.mlp(self.encoder(observation), self.encoder(goal)).float()
        return self.mlp(self.encoder(observation), self.encoder(goal), state).float()


class FixedStdNormalHead(nn.Module):
    """Maps the policy network's output to a Gaussian with a fixed standard deviation (``std`` times half
    the action range). Its mean is ``tanh``-bounded inside the action bounds, or (``clip``) the
    unbounded output, whose actions the actor and the loss clip to the bounds (OGBench's GCActor)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, std: float, mean: str = "tanh") -> None:
        super().__init__()
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)
        self.std = std
        self.mean = mean

    def forward(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.center + self.half_range * (torch.tanh(output) if self.mean == "tanh" else output)
        return loc, torch.full_like(loc, self.std) * self.half_range
