"""The loss family: each critic loss and energy against a hand computation, target critics, BC, policies."""
import math

import pytest
import torch
import torch.nn.functional as F

from contrastive_rl.objectives.critics import binary_nce_loss, infonce_loss, symmetric_infonce_loss
from contrastive_rl.objectives.energies import paired_energy, pairwise_energy
from conftest import ACT, FakeEnvSpecs, build_agent, make_batch, make_loss
from utils import make_optimizer, make_target_updater

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, -2.0, 0.5]])


def log_sum_exp(values):
    return math.log(sum(math.exp(v) for v in values))


def test_symmetric_infonce_equals_hand_computation():
    rows = [LOGITS[i, i].item() - log_sum_exp(LOGITS[i].tolist()) for i in range(3)]
    columns = [LOGITS[j, j].item() - log_sum_exp(LOGITS[:, j].tolist()) for j in range(3)]
    expected = 0.5 * (-sum(rows) / 3 - sum(columns) / 3)
    assert symmetric_infonce_loss(LOGITS).item() == pytest.approx(expected, rel=1e-6)
    assert infonce_loss(LOGITS).item() == pytest.approx(-sum(rows) / 3, rel=1e-6)


def test_binary_nce_equals_hand_computation():
    def bce(logit, label):
        p = 1 / (1 + math.exp(-logit))
        return -(label * math.log(p) + (1 - label) * math.log(1 - p))

    terms = [[bce(LOGITS[i, j].item(), float(i == j)) for j in range(3)] for i in range(3)]
    flat_mean = sum(map(sum, terms)) / 9
    assert binary_nce_loss(LOGITS).item() == pytest.approx(flat_mean, rel=1e-6)
    # The released stable-CRL code: the mean over all B^2 entries, each negative weighted 1 / (B - 1).
    weighted = sum(terms[i][j] * (1.0 if i == j else 1 / 2) for i in range(3) for j in range(3)) / 9
    assert binary_nce_loss(LOGITS, weight_negatives=True).item() == pytest.approx(weighted, rel=1e-6)


def test_energies_equal_hand_computation():
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    y = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    assert pairwise_energy(x, y, "dot").tolist() == [[0.0, 3.0], [8.0, 9.0]]
    cosine = pairwise_energy(x, y, "cosine", temperature=0.5)
    torch.testing.assert_close(cosine, torch.tensor([[0.0, 2.0], [1.6, 1.2]]))
    l2 = pairwise_energy(x, y, "l2")
    torch.testing.assert_close(l2, torch.tensor([[-math.sqrt(5), -2.0], [-math.sqrt(13), -4.0]]))


@pytest.mark.parametrize("energy", ["dot", "cosine", "l2"])
def test_paired_energy_is_the_diagonal_and_l2_matches_cdist(energy):
    torch.manual_seed(0)
    x, y = torch.randn(2, 32, 8), torch.randn(2, 32, 8)
    pairwise = pairwise_energy(x, y, energy, temperature=0.3)
    paired = paired_energy(x, y, energy, temperature=0.3)
    torch.testing.assert_close(paired, pairwise.diagonal(dim1=-2, dim2=-1), rtol=1e-4, atol=1e-4)
    if energy == "l2":
        torch.testing.assert_close(pairwise, -torch.cdist(x, y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("contrastive", ["infonce", "symmetric_infonce", "binary_nce"])
@pytest.mark.parametrize("energy", ["dot", "cosine", "l2"])
def test_critic_loss_of_each_pair_matches_its_function(make_cfg, contrastive, energy):
    _, loss_module = make_loss(
        make_cfg, f"loss.contrastive={contrastive}", f"loss.energy={energy}", "loss.temperature=0.5",
        "model.cold_init=false", "model.twin_critics=false",
    )
    batch = make_batch()
    with loss_module.critic_network_params.to_module(loss_module.critic_network):
        phi, psi = loss_module.critic_network(batch["observation"], batch["action"], batch["desired_goal"])
    logits = pairwise_energy(phi, psi, energy, temperature=0.5)
    expected = {"infonce": infonce_loss, "symmetric_infonce": symmetric_infonce_loss,
                "binary_nce": binary_nce_loss}[contrastive](logits).sum()
    assert loss_module(batch)["loss_critic"].item() == pytest.approx(expected.item(), rel=1e-5)


def td_batch(batch_size=8):
    batch = make_batch(batch_size)
    generator = torch.Generator().manual_seed(1)
    batch["next", "observation"] = torch.randn(batch_size, batch["observation"].shape[-1], generator=generator)
    batch["next", "achieved_goal"] = torch.randn(batch_size, batch["desired_goal"].shape[-1], generator=generator)
    return batch


def test_td_loss_equals_hand_computation(make_cfg):
    _, loss_module = make_loss(
        make_cfg, "loss.contrastive=td", "model.cold_init=false", "model.twin_critics=true",
        "loss.gamma=0.9", "loss.max_importance_weight=3.0",
    )
    critic, actor = loss_module.critic_network, loss_module.actor_network
    # Make the target critic differ from the online one.
    loss_module.target_critic_network_params.apply_(lambda p: p.mul_(1.5))
    batch = td_batch()
    obs, action, goal = batch["observation"], batch["action"], batch["desired_goal"]
    next_obs, next_goal = batch["next", "observation"], batch["next", "achieved_goal"]
    random_goal = goal.roll(-1, 0)

    torch.manual_seed(0)
    loss_critic = loss_module(batch)["loss_critic"]

    torch.manual_seed(0)
    with loss_module.actor_network_params.to_module(actor):
        actor_input = batch.select().set("observation", next_obs).set("desired_goal", random_goal)
        next_action = actor.get_dist(actor_input).sample()
    with loss_module.target_critic_network_params.to_module(critic):
        target = (critic.encode_state_action(next_obs, next_action) * critic.encode_goal(random_goal)).sum(-1)
    p = torch.sigmoid(target).min(0).values
    w = torch.clamp(p / (1 - p), 0, 3.0)
    with loss_module.critic_network_params.to_module(critic):
        sa = critic.encode_state_action(obs, action)
        positive = (sa * critic.encode_goal(next_goal)).sum(-1)
        negative = (sa * critic.encode_goal(random_goal)).sum(-1)
    expected = (
        -0.1 * F.logsigmoid(positive) - 0.9 * w * F.logsigmoid(negative) - F.logsigmoid(-negative)
    ).mean(-1).mean()
    assert loss_critic.item() == pytest.approx(expected.item(), rel=1e-5)


def test_target_critics_follow_with_soft_update(make_cfg):
    cfg, loss_module = make_loss(make_cfg, "loss.contrastive=td", "loss.target_tau=0.25")
    assert loss_module.has_target_critic
    updater = make_target_updater(cfg, loss_module)
    online = loss_module.critic_network_params
    target = loss_module.target_critic_network_params
    assert (target == online).all()
    optimizer = make_optimizer(cfg, loss_module)
    target_before = target.clone()
    loss_module(td_batch())["loss_critic"].backward()
    optimizer.step()
    updater.step()
    expected = target_before.apply(lambda t, o: 0.75 * t + 0.25 * o, online)
    for key, value in expected.items(True, True):
        torch.testing.assert_close(target.get(key).data, value.data)
    infonce_cfg, infonce_module = make_loss(make_cfg)  # infonce has no target critic
    assert not infonce_module.has_target_critic
    assert make_target_updater(infonce_cfg, infonce_module) is None


def test_bc_coef_one_is_behaviour_cloning_on_own_goal_rows(make_cfg):
    _, loss_module = make_loss(make_cfg, "loss.bc_coef=1.0", "loss.random_goal_fraction=0.25")
    batch = make_batch(8)
    torch.manual_seed(0)
    loss_actor = loss_module(batch)["loss_actor"]
    actor = loss_module.actor_network
    goals = torch.cat([batch["desired_goal"].roll(1, 0)[:2], batch["desired_goal"][2:]])
    with loss_module.actor_network_params.to_module(actor):
        dist = actor.get_dist(batch.select("observation").set("desired_goal", goals))
    data_action = batch["action"].clamp(-1 + 2e-4, 1 - 2e-4)
    expected = -dist.log_prob(data_action)[2:].mean()
    assert loss_actor.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bc_with_every_goal_random_clones_the_data_action_at_the_rows_own_goals(make_cfg):
    _, loss_module = make_loss(make_cfg, "loss.bc_coef=1.0", "loss.random_goal_fraction=1.0")
    batch = make_batch(8)
    loss_actor = loss_module(batch)["loss_actor"]
    assert torch.isfinite(loss_actor)
    actor = loss_module.actor_network
    with loss_module.actor_network_params.to_module(actor):
        dist = actor.get_dist(batch.select("observation", "desired_goal"))
    expected = -dist.log_prob(batch["action"].clamp(-1 + 2e-4, 1 - 2e-4)).mean()
    assert loss_actor.item() == pytest.approx(expected.item(), rel=1e-4)

    _, mixed = make_loss(make_cfg, "loss.bc_coef=0.05", "loss.random_goal_fraction=1.0")
    optimizer = torch.optim.Adam(mixed.parameters(), lr=1e-3)
    for _ in range(3):
        losses = mixed(batch)
        (losses["loss_critic"] + losses["loss_actor"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(losses["loss_actor"])


def test_fixed_std_policy_has_the_configured_std_and_bounded_mean(make_cfg):
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", "model.policy=fixed_std_normal",
                   "model.policy_std=0.3")
    actor, _ = build_agent(cfg, FakeEnvSpecs())
    batch = make_batch(64)
    batch["observation"] *= 100  # push the mean to the bounds
    dist = actor.get_dist(batch)
    assert torch.allclose(dist.stddev, torch.full((64, ACT), 0.3))
    assert dist.mean.abs().max() <= 1.0
    acted = actor(batch.clone())["action"]
    assert acted.abs().max() <= 1.0  # safe=True projects samples onto the action bounds


def test_learnt_temperature_is_trained_with_the_critic(make_cfg):
    cfg, loss_module = make_loss(make_cfg, "loss.energy=cosine", "loss.learn_temperature=true",
                                 "loss.temperature=0.1", "model.cold_init=false")
    optimizer = make_optimizer(cfg, loss_module)
    before = loss_module.temperature.item()
    assert before == pytest.approx(0.1)
    loss_module(make_batch())["loss_critic"].backward()
    assert loss_module.log_temperature.grad is not None and loss_module.log_temperature.grad != 0
    optimizer.step()
    assert loss_module.temperature.item() != before


def test_actor_objectives_equal_their_equations():
    from contrastive_rl.objectives.actors import contrastive_actor_loss, ddpg_bc_actor_loss

    q, log_prob, alpha = torch.tensor([1.0, -3.0]), torch.tensor([-0.5, 0.5]), torch.tensor(0.2)
    # mean(alpha log pi - q) = mean(-0.1 - 1, 0.1 + 3) = 1.0; mixed with BC 2.0 at 0.25: 0.25 * 2 + 0.75 * 1.
    assert contrastive_actor_loss(q, log_prob, alpha, None, 0.0).item() == pytest.approx(1.0)
    assert contrastive_actor_loss(q, log_prob, alpha, torch.tensor(2.0), 0.25).item() == pytest.approx(1.25)
    # -mean(q) / mean|q| = 1 / 2; plus 0.1 * BC 2.0.
    assert ddpg_bc_actor_loss(q, None, 0.0).item() == pytest.approx(0.5, rel=1e-5)
    assert ddpg_bc_actor_loss(q, torch.tensor(2.0), 0.1).item() == pytest.approx(0.7, rel=1e-5)
