"""OGBench's CRL recipe: logits / sqrt(d), the DDPG+BC actor, separate actor goals, GELU, the preset."""
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from contrastive_rl.errors import ConfigError
from contrastive_rl.trainers.config import validate_config
from contrastive_rl.objectives.energies import paired_energy, pairwise_energy
from conftest import ROOT, FakeEnvSpecs, build_agent, make_batch, make_loss
from utils import make_optimizer

DDPG_BC = ("loss.actor_loss=ddpg_bc", "model.policy=fixed_std_normal", "model.policy_std=1.0",
           "model.twin_critics=true", "model.cold_init=false", "loss.random_goal_fraction=0.0")


def with_actor_goals(batch, seed=5):
    generator = torch.Generator().manual_seed(seed)
    batch["actor_desired_goal"] = torch.randn(batch["desired_goal"].shape, generator=generator)
    return batch


def test_scaled_dot_is_dot_over_sqrt_dim():
    torch.manual_seed(0)
    x, y = torch.randn(2, 16, 9), torch.randn(2, 16, 9)
    torch.testing.assert_close(pairwise_energy(x, y, "scaled_dot"), x @ y.transpose(-1, -2) / 3.0)
    torch.testing.assert_close(paired_energy(x, y, "scaled_dot"), (x * y).sum(-1) / 3.0)


def critic_q(loss_module, observation, action, goal):
    with loss_module.critic_network_params.to_module(loss_module.critic_network):
        phi, psi = loss_module.critic_network(observation, action, goal)
    return paired_energy(phi, psi, loss_module.energy).min(0).values


@pytest.mark.parametrize("bc_coef", [0.0, 0.03, 3.0])  # 3.0: OGBench's manipulation play datasets
def test_ddpg_bc_actor_loss_equals_hand_computation(make_cfg, bc_coef):
    _, loss_module = make_loss(make_cfg, *DDPG_BC, "loss.energy=scaled_dot", f"loss.bc_coef={bc_coef}")
    batch = make_batch(16)
    loss_actor = loss_module(batch)["loss_actor"]
    with loss_module.actor_network_params.to_module(loss_module.actor_network):
        dist = loss_module.actor_network.get_dist(batch.select("observation", "desired_goal"))
    q = critic_q(loss_module, batch["observation"], dist.mean, batch["desired_goal"])
    bc = -dist.log_prob(batch["action"].clamp(-1 + 2e-4, 1 - 2e-4)).mean()
    expected = -q.mean() / (q.abs().mean() + 1e-6) + bc_coef * bc
    assert loss_actor.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ddpg_bc_q_term_is_scale_free_and_scores_the_mode(make_cfg):
    """Q / mean|Q| does not change when the critic's scale does, lies in [-1, 1], and the action scored
    is the mode: two passes give the same loss (no sampling)."""
    _, loss_module = make_loss(make_cfg, *DDPG_BC)
    batch = make_batch(16)
    first, second = loss_module(batch)["loss_actor"].item(), loss_module(batch)["loss_actor"].item()
    assert first == second and abs(first) <= 1
    with loss_module.actor_network_params.to_module(loss_module.actor_network):
        mode = loss_module.actor_network.get_dist(batch.select("observation", "desired_goal")).mean.detach()
    q_before = critic_q(loss_module, batch["observation"], mode, batch["desired_goal"])
    for scale in (10.0, 100.0):
        with torch.no_grad():  # psi's output layer: every Q is multiplied by the scale
            for critic, psi in enumerate(loss_module.critic_network.goal_encoders):
                output_layer = loss_module.critic_network_params["goal_encoders", str(critic), str(len(psi) - 1)]
                output_layer.apply_(lambda param: param.mul_(scale))
        q_before = q_before * scale
        q_after = critic_q(loss_module, batch["observation"], mode, batch["desired_goal"])
        torch.testing.assert_close(q_after, q_before, rtol=1e-4, atol=0)
        assert loss_module(batch)["loss_actor"].item() == pytest.approx(first, rel=1e-4)


def test_ddpg_bc_gradient_moves_the_actor_towards_higher_q(make_cfg):
    cfg, loss_module = make_loss(make_cfg, *DDPG_BC)
    optimizer = make_optimizer(cfg, loss_module)
    batch = make_batch(64)
    inputs = batch.select("observation", "desired_goal")

    def mean_q():
        with torch.no_grad(), loss_module.actor_network_params.to_module(loss_module.actor_network):
            mode = loss_module.actor_network.get_dist(inputs).mean
        return critic_q(loss_module, batch["observation"], mode, batch["desired_goal"]).mean().item()

    before = mean_q()
    for _ in range(20):
        loss_module(batch)["loss_actor"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert mean_q() > before


def test_separate_actor_goals_feed_the_actor_and_not_the_critic(make_cfg):
    _, loss_module = make_loss(make_cfg, *DDPG_BC, "buffer.actor_goals=uniform_future")
    assert "actor_desired_goal" in loss_module.in_keys
    batch = with_actor_goals(make_batch(16))
    losses = loss_module(batch)
    with loss_module.actor_network_params.to_module(loss_module.actor_network):
        dist = loss_module.actor_network.get_dist(
            batch.select("observation").set("desired_goal", batch["actor_desired_goal"])
        )
    q = critic_q(loss_module, batch["observation"], dist.mean, batch["actor_desired_goal"])
    expected = -q.mean() / (q.abs().mean() + 1e-6)
    assert losses["loss_actor"].item() == pytest.approx(expected.item(), rel=1e-5)

    other_actor_goals = with_actor_goals(batch.clone(), seed=6)
    changed = loss_module(other_actor_goals)
    assert changed["loss_critic"].item() == losses["loss_critic"].item()
    assert changed["loss_actor"].item() != losses["loss_actor"].item()
    other_critic_goals = batch.clone().set("desired_goal", torch.randn(16, batch["desired_goal"].shape[-1]))
    assert loss_module(other_critic_goals)["loss_actor"].item() == losses["loss_actor"].item()


def test_gelu_activation_reaches_every_mlp(make_cfg):
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=3", "model.activation=gelu")
    actor, critic = build_agent(cfg, FakeEnvSpecs())
    for network in (actor, critic):
        activations = [m for m in network.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
        assert activations and all(isinstance(m, nn.GELU) for m in activations)


def test_a_bc_weight_above_one_is_ddpg_bc_only(make_cfg):
    validate_config(make_cfg(*DDPG_BC, "loss.bc_coef=3.0"))
    with pytest.raises(ConfigError, match=r"^loss.bc_coef=3 is not allowed with loss.actor_loss=contrastive"):
        validate_config(make_cfg("loss.bc_coef=3.0"))


def test_ddpg_bc_with_an_entropy_term_is_refused(make_cfg):
    for overrides in (("loss.alpha_init=0.1",), ("loss.auto_alpha=true", "loss.alpha_init=0.1")):
        with pytest.raises(ConfigError, match=r"^loss.actor_loss=ddpg_bc is not allowed .* no entropy term"):
            validate_config(make_cfg("loss.actor_loss=ddpg_bc", *overrides))


def test_ogbench_preset_holds_ogbenchs_crl_settings():
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name="config_ogbench_crl", overrides=["env.env_name=pointmaze-large-navigate-v0"])
    validate_config(cfg)
    assert cfg.offline.dataset == "ogbench:pointmaze-large-navigate-v0"
    model = cfg.model
    assert (cfg.buffer.batch_size, model.hidden_dim, model.num_layers, model.embed_dim) == (1024, 512, 3, 512)
    assert cfg.model.use_layer_norm and cfg.model.twin_critics and not cfg.model.cold_init
    assert (cfg.model.activation, cfg.model.policy, cfg.model.policy_std) == ("gelu", "fixed_std_normal", 1.0)
    assert (cfg.loss.contrastive, cfg.loss.energy, cfg.loss.weight_negatives) == ("binary_nce", "scaled_dot", False)
    assert (cfg.loss.actor_loss, cfg.loss.bc_coef, cfg.loss.random_goal_fraction) == ("ddpg_bc", 0.03, 0.0)
    assert cfg.buffer.actor_goals == "uniform_future" and math.isclose(cfg.loss.gamma, 0.99)
    assert (cfg.buffer.goal_offsets, model.init, model.policy_mean) == ("clamped", "ogbench", "clip")
    assert model.layer_norm_after_activation
    offline = cfg.offline
    assert (offline.gradient_steps, offline.eval_interval, cfg.logger.num_eval_episodes) == (1_000_000, 100_000, 50)


# ====================================================================
# What OGBench's code does and this project's defaults do not
# ------------------------------------------------------------


@pytest.mark.parametrize("after", [False, True])
def test_layer_norm_sits_where_each_code_puts_it(make_cfg, after):
    """torchrl's MLP and the stable-CRL code normalise before the activation; OGBench's MLP after it."""
    cfg = make_cfg("model.hidden_dim=16", "model.num_layers=2", "model.embed_dim=8", "model.activation=gelu",
                   f"model.layer_norm_after_activation={str(after).lower()}", "model.actor_layer_norm=true")
    actor, critic = build_agent(cfg, FakeEnvSpecs())
    torch.manual_seed(0)
    for mlp in (critic.goal_encoders[0], actor.module[0][0].module.mlp):
        first_block = nn.Sequential(*list(mlp)[:3 - after])
        hidden = first_block(torch.randn(64, mlp[0].in_features))
        spread = (hidden.std(-1, unbiased=False) - 1).abs().max()
        ends_normalised = (hidden.mean(-1).abs().max() < 1e-4) & (spread < 1e-2)
        assert bool(ends_normalised) == after
        assert (hidden > -0.2).all() != after  # GELU's floor is about -0.17: the block ends with it only before


def test_ogbench_init_is_glorot_uniform_with_zero_biases_and_a_small_policy_mean_layer():
    from contrastive_rl.modules.models import OGBENCH_FINAL_POLICY_SCALE, ogbench_init_

    torch.manual_seed(0)
    mlp = ogbench_init_(nn.Sequential(nn.Linear(300, 500), nn.GELU(), nn.Linear(500, 100)),
                        final_scale=OGBENCH_FINAL_POLICY_SCALE)
    for linear, scale in ((mlp[0], 1.0), (mlp[2], 1e-2)):
        fan_in, fan_out = linear.in_features, linear.out_features
        limit = math.sqrt(6 * scale / (fan_in + fan_out))  # flax variance_scaling(scale, fan_avg, uniform)
        weight = linear.weight.detach()
        assert weight.abs().max() <= limit and weight.abs().max() > 0.99 * limit
        assert weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.02)
        assert (linear.bias == 0).all()


def test_clipped_policy_mean_is_unbounded_and_clipped_before_the_critic(make_cfg):
    cfg, loss_module = make_loss(make_cfg, *DDPG_BC, "model.policy_mean=clip", "model.init=ogbench",
                                 "loss.bc_coef=0")
    actor = loss_module.actor_network
    head = actor.module[0][1].module
    loc, scale = head(torch.tensor([[3.0, -0.5]]))
    assert loc.tolist() == [[3.0, -0.5]] and scale.tolist() == [[1.0, 1.0]]
    assert loss_module.clip_actions
    batch = make_batch(16)
    with loss_module.actor_network_params.to_module(actor):
        mode = actor.get_dist(batch.select("observation", "desired_goal")).mode
    q = critic_q(loss_module, batch["observation"], mode.clamp(-1, 1), batch["desired_goal"])
    assert loss_module(batch)["loss_actor"].item() == pytest.approx((-q.mean() / q.abs().mean()).item(), rel=1e-5)
    with pytest.raises(ConfigError, match="model.policy_mean=clip is not allowed with model.policy=tanh_normal"):
        validate_config(make_cfg("model.policy_mean=clip"))


def test_clamped_offsets_put_the_tail_of_the_geometric_on_the_last_step():
    from contrastive_rl.data.replay import sample_clamped_geometric, sample_uniform_offset

    torch.manual_seed(0)
    gamma, horizon = 0.9, 10
    offsets = sample_clamped_geometric(torch.full((400_000,), horizon), gamma)
    frequencies = torch.bincount(offsets, minlength=horizon + 1)[1:].double() / len(offsets)
    expected = [(1 - gamma) * gamma ** (d - 1) for d in range(1, horizon)] + [gamma ** (horizon - 1)]
    torch.testing.assert_close(frequencies, torch.tensor(expected, dtype=torch.float64), atol=3e-3, rtol=0)
    rounded = sample_uniform_offset(torch.full((400_000,), 5), rounded=True)
    frequencies = torch.bincount(rounded, minlength=6)[1:].double() / len(rounded)
    torch.testing.assert_close(frequencies, torch.tensor([1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8], dtype=torch.float64),
                               atol=3e-3, rtol=0)
    plain = sample_uniform_offset(torch.full((400_000,), 5))
    assert plain.min() == 1 and plain.max() == 5
    assert (torch.bincount(plain)[1:].double() / len(plain) - 0.2).abs().max() < 3e-3
