"""Critics that plan: the MRN and IQE quasimetrics, TD InfoNCE and TMD against hand computations, each
stop-gradient where the papers' code puts it, and the combinations that make no sense."""
import math

import pytest
import torch

from conftest import StateGoalSpecs, build_agent, build_loss_module, check_config, state_goal_batch
from contrastive_rl.objectives import energies as energies_module
from contrastive_rl.errors import ConfigError
from contrastive_rl.trainers.config import validate_config
from contrastive_rl.objectives.energies import iqe_distance, mrn_distance, paired_energy, pairwise_energy

def make_state_goal_loss(make_cfg, *overrides):
    cfg = make_cfg("model.hidden_dim=16", "model.num_layers=2", "model.embed_dim=8", "model.cold_init=false",
                   "loss.quasimetric_components=2", "loss.random_goal_fraction=0", *overrides)
    actor, critic = build_agent(cfg, StateGoalSpecs())
    return cfg, build_loss_module(cfg, actor, critic)


# ====================================================================
# Quasimetrics
# ------------


def test_mrn_distance_equals_hand_computation():
    # Two parts of 4: [max half | l2 half] each.
    x = torch.tensor([[1.0, 3.0, 0.0, 0.0, 2.0, -1.0, 1.0, 1.0]])
    y = torch.tensor([[0.0, 4.0, 3.0, 4.0, 0.0, 0.0, 1.0, 1.0]])
    first = max(1.0 - 0.0, 0.0, 3.0 - 4.0) + math.sqrt(3.0**2 + 4.0**2 + 1e-6)
    second = max(2.0, -1.0, 0.0) + math.sqrt(0.0 + 1e-6)
    assert mrn_distance(x, y, components=2).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # Asymmetric: from y to x, the residual half reads relu(y - x).
    back = (max(0.0, 1.0) + 5.0 + max(0.0, 1.0) + 0.001) / 2
    assert mrn_distance(y, x, components=2).item() == pytest.approx(back, rel=1e-4)


def test_iqe_distance_is_the_length_of_the_union_of_intervals():
    # One group of 4 coordinates: intervals [0, 2], [1, 3], [5, 6] and an empty one (2 > 1): 3 + 1.
    x = torch.tensor([[0.0, 1.0, 5.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([[2.0, 3.0, 6.0, 1.0, 0.5, 0.0, 0.0, 0.0]])
    groups = torch.tensor([4.0, 0.5])
    for mix in (0.0, 0.3, 1.0):
        expected = mix * groups.mean() + (1 - mix) * groups.max()
        assert iqe_distance(x, y, mix, group_size=4).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("energy", ["mrn", "iqe"])
def test_quasimetric_energies_are_negative_distances_that_obey_the_triangle_inequality(energy):
    torch.manual_seed(0)
    x, y, z = torch.randn(3, 2, 12, 16).unbind(0)
    pairwise = pairwise_energy(x, y, energy, components=4, iqe_mix=0.4)
    paired = paired_energy(x, y, energy, components=4, iqe_mix=0.4)
    torch.testing.assert_close(paired, pairwise.diagonal(dim1=-2, dim2=-1), rtol=1e-5, atol=1e-5)
    assert pairwise.shape == (2, 12, 12) and (pairwise <= 0).all()

    def distance(a, b):
        return -paired_energy(a, b, energy, components=4, iqe_mix=0.4)

    assert (distance(x, z) <= distance(x, y) + distance(y, z) + 1e-4).all()
    assert distance(x, x).max() < 1e-2
    assert not torch.allclose(distance(x, y), distance(y, x))


@pytest.mark.parametrize("block_floats", [2**18, 24], ids=["one block", "blocks of a few rows"])
def test_pairwise_mrn_and_its_gradients_equal_the_broadcast_computation(block_floats, monkeypatch):
    """The pairwise distance's hand-written forward and backward, walking its pairs in one block or in
    blocks of a few rows, against autograd through a B x B x d difference."""
    monkeypatch.setattr(energies_module, "_CACHE_BLOCK_FLOATS", block_floats)
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 7, 9, dtype=torch.float64)
    (mrn_distance(x, y, components=2, pairwise=True) * weights).sum().backward()
    fast = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    broadcast = mrn_distance(x.unsqueeze(-2).expand(2, 7, 9, 16), y.unsqueeze(-3).expand(2, 7, 9, 16), components=2)
    (broadcast * weights).sum().backward()
    torch.testing.assert_close(fast[0], x.grad)
    torch.testing.assert_close(fast[1], y.grad)
    torch.testing.assert_close(mrn_distance(x, y, components=2, pairwise=True), broadcast)


def test_iqe_mix_is_learnt_with_the_critic(make_cfg):
    _, loss_module = make_state_goal_loss(make_cfg, "loss.energy=iqe", "loss.contrastive=infonce")
    assert any(p is loss_module.iqe_mix_logit for p in loss_module.critic_parameters())
    loss_module(state_goal_batch())["loss_critic"].backward()
    assert loss_module.iqe_mix_logit.grad.abs() > 0


# ====================================================================
# TD InfoNCE
# ----------


def test_td_infonce_equals_hand_computation(make_cfg):
    _, loss_module = make_state_goal_loss(make_cfg, "loss.contrastive=td_infonce", "loss.energy=scaled_dot",
                                          "model.twin_critics=true", "loss.gamma=0.8")
    critic, actor = loss_module.critic_network, loss_module.actor_network
    loss_module.target_critic_network_params.apply_(lambda p: p.mul_(1.3))
    batch = state_goal_batch()
    obs, action, goal = batch["observation"], batch["action"], batch["desired_goal"]
    next_obs, next_goal = batch["next", "observation"], batch["next", "achieved_goal"]

    torch.manual_seed(0)
    loss_critic = loss_module(batch)["loss_critic"]

    torch.manual_seed(0)
    with loss_module.actor_network_params.to_module(actor):
        next_action = actor.get_dist(batch.select().set("observation", next_obs).set("desired_goal", goal)).sample()
    with loss_module.target_critic_network_params.to_module(critic):
        target = critic.encode_state_action(next_obs, next_action) @ critic.encode_goal(goal).transpose(-1, -2)
    labels = torch.softmax(target.min(0).values / math.sqrt(8), -1)
    with loss_module.critic_network_params.to_module(critic):
        phi = critic.encode_state_action(obs, action)
        logits = phi @ critic.encode_goal(goal).transpose(-1, -2) / math.sqrt(8)
        positive = (phi * critic.encode_goal(next_goal)).sum(-1) / math.sqrt(8)
    expected = 0.0
    for k in range(2):
        for i in range(6):
            row = logits[k, i].clone()
            row[i] = positive[k, i]
            next_state_term = -torch.log_softmax(row, 0)[i]
            bootstrap = -(labels[i] * torch.log_softmax(logits[k, i], 0)).sum()
            expected = expected + (0.2 * next_state_term + 0.8 * bootstrap) / 12
    assert loss_critic.item() == pytest.approx(expected.item(), rel=1e-5)


def test_td_infonce_soft_labels_carry_no_gradient(make_cfg):
    """The soft labels come from the target critics at s' without gradient: s' reaches the loss only
    through them, s'-as-goal (the positive) is trained, and the target critics get no gradient."""
    _, loss_module = make_state_goal_loss(make_cfg, "loss.contrastive=td_infonce", "loss.energy=scaled_dot")
    batch = state_goal_batch()
    batch["next", "observation"].requires_grad_(True)
    batch["next", "achieved_goal"].requires_grad_(True)
    loss_module(batch)["loss_critic"].backward()
    assert batch["next", "observation"].grad is None
    assert batch["next", "achieved_goal"].grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_module.target_critic_network_params.values(True, True))
    assert all(p.grad is None for p in loss_module.actor_network_params.values(True, True))


def test_td_infonce_actor_scores_the_log_ratio_which_ignores_a_constant_per_state_action(make_cfg):
    """The actor's Q is f_ii - logsumexp_j f_ij + log B (min over critics), by hand; adding c_i to row i
    of every critic, what TD InfoNCE's softmax over goals cannot see, leaves it unchanged."""
    _, loss_module = make_state_goal_loss(make_cfg, "loss.contrastive=td_infonce", "loss.energy=dot",
                                          "model.twin_critics=true")
    torch.manual_seed(0)
    phi, psi = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    logits = (phi @ psi.transpose(-1, -2)).min(0).values
    expected = torch.stack([logits[i, i] - torch.logsumexp(logits[i], 0) + math.log(6) for i in range(6)])
    torch.testing.assert_close(loss_module.actor_q(phi, psi), expected)
    # A constant c_i on row i of f: one more coordinate, c_i in phi and 1 in psi.
    shift = torch.randn(6, 1) * 10
    shifted_phi = torch.cat([phi, shift.expand(2, 6, 1)], -1)
    shifted_psi = torch.cat([psi, torch.ones(2, 6, 1)], -1)
    torch.testing.assert_close(loss_module.actor_q(shifted_phi, shifted_psi), expected, rtol=1e-4, atol=1e-4)
    raw = (shifted_phi * shifted_psi).sum(-1).min(0).values
    assert not torch.allclose(raw, (phi * psi).sum(-1).min(0).values, atol=1)


# ====================================================================
# TMD
# ---


def test_tmd_equals_hand_computation(make_cfg):
    _, loss_module = make_state_goal_loss(
        make_cfg, "loss.contrastive=tmd", "loss.energy=mrn", "model.twin_critics=false", "loss.gamma=0.9",
        "loss.tmd_zeta=0.5", "loss.tmd_clip=0.2", "loss.tmd_diagonal_weight=0.25",
    )
    critic = loss_module.critic_network
    batch = state_goal_batch()
    loss_critic = loss_module(batch)["loss_critic"]
    with loss_module.critic_network_params.to_module(critic):
        phi = critic.encode_state_action(batch["observation"], batch["action"])[0]
        psi_goal = critic.encode_goal(batch["desired_goal"])[0]
        psi_state = critic.encode_goal(batch["observation"])[0]
        psi_next = critic.encode_goal(batch["next", "achieved_goal"])[0]

    def d(a, b):
        return mrn_distance(a.unsqueeze(0), b.unsqueeze(0), components=2).item()

    n = 6
    dist = [[d(phi[i], psi_goal[j]) for j in range(n)] for i in range(n)]
    dist_next = [[d(psi_next[i], psi_goal[j]) for j in range(n)] for i in range(n)]
    # Backward InfoNCE: for each goal j, a softmax over the state-actions i.
    nce = 0.0
    for j in range(n):
        column = [-dist[i][j] / math.sqrt(8) for i in range(n)]
        nce += (math.log(sum(math.exp(v) for v in column)) - column[j]) / n
    invariance = sum(d(psi_state[i], phi[i]) for i in range(n)) / n

    def divergence(i, j):
        delta = dist[i][j] - dist_next[i][j]
        return delta if delta > 0.2 else 0.9 * math.exp(delta) - dist[i][j]

    backup = sum(0.75 * divergence(i, j) + 0.25 * divergence(i, i) for i in range(n) for j in range(n)) / n**2
    assert loss_critic.item() == pytest.approx(nce + invariance + 0.5 * backup, rel=1e-4)


def test_tmd_backup_target_carries_no_gradient(make_cfg):
    """d(psi(s'), psi(g)) is the backup's target: s' gets no gradient, while d(phi(s, a), psi(g)) does."""
    _, loss_module = make_state_goal_loss(make_cfg, "loss.contrastive=tmd", "loss.energy=iqe")
    batch = state_goal_batch()
    batch["next", "achieved_goal"].requires_grad_(True)
    batch["desired_goal"].requires_grad_(True)
    loss_module(batch)["loss_critic"].backward()
    assert batch["next", "achieved_goal"].grad is None
    assert batch["desired_goal"].grad.abs().sum() > 0


def test_tmd_actor_maximises_the_negative_distance(make_cfg):
    cfg, loss_module = make_state_goal_loss(
        make_cfg, "loss.contrastive=tmd", "loss.energy=mrn", "loss.actor_loss=ddpg_bc",
        "model.policy=fixed_std_normal", "model.policy_mean=clip", "model.policy_std=1.0", "loss.bc_coef=0",
    )
    critic, actor = loss_module.critic_network, loss_module.actor_network
    batch = state_goal_batch()
    loss_actor = loss_module(batch)["loss_actor"]
    with loss_module.actor_network_params.to_module(actor):
        action = actor.get_dist(batch.select("observation", "desired_goal")).mode.clamp(-1, 1)
    with loss_module.critic_network_params.to_module(critic):
        q = -mrn_distance(critic.encode_state_action(batch["observation"], action),
                          critic.encode_goal(batch["desired_goal"]), components=2).min(0).values
    assert loss_actor.item() == pytest.approx((-q.mean() / q.abs().mean()).item(), rel=1e-5)


# ====================================================================
# Bad input
# ---------


@pytest.mark.parametrize("overrides,pattern", [
    (("loss.energy=mrn", "loss.contrastive=binary_nce"),
     "loss.energy=mrn is not allowed with loss.contrastive=binary_nce"),
    (("loss.energy=iqe", "loss.contrastive=td"), "loss.energy=iqe is not allowed with loss.contrastive=td"),
    (("loss.contrastive=tmd", "loss.energy=dot"), "loss.contrastive=tmd is not allowed with loss.energy=dot"),
    (("loss.energy=mrn", "model.embed_dim=12", "loss.quasimetric_components=8"),
     "loss.quasimetric_components=8 is not allowed with model.embed_dim=12"),
    (("loss.energy=mrn", "model.embed_dim=8", "loss.quasimetric_components=8"), "at least 2 dimensions per part"),
    (("loss.contrastive=nce",), "loss.contrastive='nce' is not allowed"),
    (("loss.energy=mrm",), "loss.energy='mrm' is not allowed"),
])
def test_combinations_that_make_no_sense_are_refused(make_cfg, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(make_cfg(*overrides))


def test_tmd_on_an_env_whose_goals_are_not_states_is_refused(make_cfg):
    cfg = make_cfg("loss.contrastive=tmd", "loss.energy=mrn")  # FetchReach: 3-d goals, 10-d observations
    with pytest.raises(ConfigError, match="TMD's psi reads states as goals"):
        check_config(cfg)
