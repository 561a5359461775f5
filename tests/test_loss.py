"""The contrastive critic, the InfoNCE loss and the actor update."""
import math

import pytest
import torch

from conftest import ACT, GOAL, OBS, make_batch, make_loss
from contrastive_rl.objectives.critics import infonce_loss, logsumexp_penalty
from contrastive_rl.modules.models import ContrastiveCritic
from utils import make_optimizer


def test_infonce_equals_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])
    rows = [
        -2.0 + math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)),
        -1.0 + math.log(math.exp(0.0) + math.exp(1.0) + math.exp(3.0)),
        -1.0 + math.log(3 * math.exp(1.0)),
    ]
    assert infonce_loss(logits).item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    penalties = [
        math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)) ** 2,
        math.log(math.exp(0.0) + math.exp(1.0) + math.exp(3.0)) ** 2,
        math.log(3 * math.exp(1.0)) ** 2,
    ]
    assert logsumexp_penalty(logits).item() == pytest.approx(sum(penalties) / 3, rel=1e-6)


def test_critic_loss_is_infonce_of_inner_products_averaged_over_critics(make_cfg):
    _, loss_module = make_loss(make_cfg, "model.twin_critics=true", "loss.logsumexp_coef=0.01")
    batch = make_batch()
    critic = loss_module.critic_network
    with loss_module.critic_network_params.to_module(critic):
        # Warm the cold-initialised output layers so the logits are not all ~0.
        for encoder in [*critic.state_action_encoders, *critic.goal_encoders]:
            torch.nn.init.normal_(encoder[-1].weight)
        phi = critic.encode_state_action(batch["observation"], batch["action"])
        psi = critic.encode_goal(batch["desired_goal"])
    expected = 0.0
    for k in range(2):
        logits = phi[k] @ psi[k].T
        ce = -torch.log_softmax(logits, dim=1).diagonal().mean()
        penalty = torch.logsumexp(logits, dim=1).pow(2).mean()
        expected = expected + (ce + 0.01 * penalty) / 2
    assert loss_module(batch)["loss_critic"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_cold_init_logits_start_at_zero():
    critic = ContrastiveCritic(
        OBS, ACT, GOAL, embed_dim=64, hidden_dim=1024, num_layers=4,
        use_layer_norm=True, cold_init=True, num_critics=2,
    )
    batch = make_batch(256)
    phi, psi = critic(batch["observation"], batch["action"], batch["desired_goal"])
    logits = phi @ psi.transpose(-1, -2)
    assert logits.abs().max().item() < 1e-15
    last = critic.goal_encoders[0][-1]
    assert last.weight.abs().max().item() <= 1e-12 and last.bias.abs().max().item() == 0
    # InfoNCE at ~0 logits is log(B): every goal equally likely.
    assert infonce_loss(logits).mean().item() == pytest.approx(math.log(256), rel=1e-6)


def test_without_cold_init_logits_are_not_zero():
    critic = ContrastiveCritic(
        OBS, ACT, GOAL, embed_dim=16, hidden_dim=64, num_layers=2,
        use_layer_norm=True, cold_init=False,
    )
    batch = make_batch(32)
    phi, psi = critic(batch["observation"], batch["action"], batch["desired_goal"])
    assert (phi @ psi.transpose(-1, -2)).abs().max().item() > 1e-3


def test_encoder_layout_follows_config():
    critic = ContrastiveCritic(
        OBS, ACT, GOAL, embed_dim=7, hidden_dim=11, num_layers=3, use_layer_norm=True, cold_init=True
    )
    encoder = critic.state_action_encoders[0]
    linears = [m for m in encoder if isinstance(m, torch.nn.Linear)]
    norms = [m for m in encoder if isinstance(m, torch.nn.LayerNorm)]
    assert [(l.in_features, l.out_features) for l in linears] == [(7, 11), (11, 11), (11, 11), (11, 7)]
    assert len(norms) == 3


def test_actor_loss_leaves_critic_unchanged(make_cfg):
    cfg, loss_module = make_loss(make_cfg, "model.twin_critics=true", "loss.random_goal_fraction=0.5")
    optimizer = make_optimizer(cfg, loss_module)
    critic_before = loss_module.critic_network_params.clone()
    actor_before = loss_module.actor_network_params.clone()
    loss_module(make_batch())["loss_actor"].backward()
    critic_grads = [p.grad for p in loss_module.critic_network_params.values(True, True)]
    assert all(g is None or (g == 0).all() for g in critic_grads)
    optimizer.step()
    assert (loss_module.critic_network_params == critic_before).all()
    assert not (loss_module.actor_network_params == actor_before).all()


def graph_leaves(output: torch.Tensor) -> list[torch.Tensor]:
    """The tensors whose gradients a backward pass from ``output`` computes."""
    leaves, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def test_actor_loss_computes_no_critic_weight_gradients(make_cfg):
    """The critic's weights are constants in the actor loss: backward must not compute their
    gradients (even ones thrown away), which would cost a third of the actor's critic pass."""
    _, loss_module = make_loss(make_cfg, "model.twin_critics=true")
    leaves = graph_leaves(loss_module(make_batch())["loss_actor"])
    actor_params = list(loss_module.actor_network_params.values(True, True))
    assert {id(leaf) for leaf in leaves} == {id(param) for param in actor_params}


def test_actor_loss_uses_min_over_critics_and_other_rows_goals(make_cfg):
    _, loss_module = make_loss(make_cfg, "model.twin_critics=true", "loss.random_goal_fraction=0.25")
    batch = make_batch(8)
    goal_repr = torch.randn(2, 8, 8)
    goals, reprs, num_random = loss_module._actor_goals(batch["desired_goal"], goal_repr)
    assert num_random == 2
    assert torch.equal(goals[:2], batch["desired_goal"].roll(1, 0)[:2])
    assert torch.equal(goals[2:], batch["desired_goal"][2:])
    assert torch.equal(reprs[:, :2], goal_repr.roll(1, 1)[:, :2])
    torch.manual_seed(0)
    loss_actor, log_prob = loss_module._actor_loss(
        batch["observation"], None, batch["action"], batch["desired_goal"], goal_repr
    )
    torch.manual_seed(0)
    actor_input = batch.select("observation").set("desired_goal", goals)
    with loss_module.actor_network_params.to_module(loss_module.actor_network):
        action = loss_module.actor_network.get_dist(actor_input).rsample()
    with loss_module.critic_network_params.to_module(loss_module.critic_network):
        phi = loss_module.critic_network.encode_state_action(batch["observation"], action)
    expected = -(phi * reprs).sum(-1).min(0).values.mean()
    assert loss_actor.item() == pytest.approx(expected.item(), rel=1e-5)


def test_auto_alpha_moves_alpha_towards_target_entropy(make_cfg):
    cfg, loss_module = make_loss(
        make_cfg, "loss.auto_alpha=true", "loss.alpha_init=0.1", "loss.target_entropy=100.0"
    )
    optimizer = make_optimizer(cfg, loss_module)
    alpha_before = loss_module.alpha.item()
    for _ in range(5):
        loss_td = loss_module(make_batch())
        (loss_td["loss_alpha"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    # Entropy far below the target: alpha must grow.
    assert loss_module.alpha.item() > alpha_before


def test_critic_learns_to_pick_the_future_goal(make_cfg):
    """On data where the goal is a fixed function of (s, a), InfoNCE accuracy climbs far above chance."""
    torch.manual_seed(0)
    cfg, loss_module = make_loss(make_cfg, "optim.lr=1e-3", "model.twin_critics=false")
    optimizer = make_optimizer(cfg, loss_module)
    projection = torch.randn(OBS + ACT, GOAL)
    for step in range(300):
        batch = make_batch(64, seed=step)
        batch["desired_goal"] = torch.cat([batch["observation"], batch["action"]], -1) @ projection
        loss_td = loss_module(batch)
        loss_td["loss_critic"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss_td["logits_accuracy"].item() > 0.3  # chance is 1/64
    assert loss_td["logits_positive"].item() > loss_td["logits_negative"].item() + 1.0
