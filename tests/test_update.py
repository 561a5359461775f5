"""The gradient update: compiled equals eager, bf16 autocast keeps the losses in float32 and learns,
the non-finite guard, the OGBench actor without LayerNorm."""
import pytest
import torch
from torch import nn

from contrastive_rl.loss import pairwise_energy
from contrastive_rl.nonfinite import NonFiniteError
from contrastive_rl.update import GradientUpdate
from conftest import FakeEnvSpecs, build_agent, build_loss_module, make_batch
from utils import make_optimizer, make_target_updater

RECIPE = ("buffer.actor_goals=uniform_future", "loss.actor_loss=ddpg_bc", "model.policy=fixed_std_normal",
          "model.policy_std=1.0", "loss.contrastive=binary_nce", "loss.energy=scaled_dot", "loss.bc_coef=0.03",
          "loss.random_goal_fraction=0.0", "model.cold_init=false", "model.activation=gelu",
          "model.actor_layer_norm=false")


def make_update(make_cfg, *overrides, seed=0):
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", "model.embed_dim=8", "device=cpu", *overrides)
    torch.manual_seed(seed)
    actor, critic = build_agent(cfg, FakeEnvSpecs())
    loss_module = build_loss_module(cfg, actor, critic)
    optimizer = make_optimizer(cfg, loss_module)
    update = GradientUpdate(cfg, loss_module, optimizer, make_target_updater(cfg, loss_module), torch.device("cpu"))
    return update, loss_module


def recipe_batch(seed):
    """A batch with everything a loss may read: actor goals, next states and their goals."""
    batch = make_batch(32, seed=seed)
    other = make_batch(32, seed=seed + 100)
    batch["actor_desired_goal"] = other["desired_goal"]
    batch["next", "observation"] = other["observation"]
    batch["next", "achieved_goal"] = make_batch(32, seed=seed + 200)["desired_goal"]
    return batch


def parameters(loss_module):
    return torch.cat([p.detach().flatten() for p in loss_module.parameters()])


@pytest.mark.parametrize("overrides", [RECIPE, ("loss.contrastive=infonce",), ("loss.contrastive=td",)],
                         ids=["ogbench_recipe", "infonce", "td"])
def test_compiled_update_equals_eager(make_cfg, overrides):
    """The compiled update (backward traced into the graph) takes the same steps as the eager one.
    The compiled graph draws its random numbers as eager code does (``fallback_random``), so that the
    sampled policies' actions agree too."""
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        compare_compiled_with_eager(make_cfg, overrides)


def compare_compiled_with_eager(make_cfg, overrides):
    eager, eager_loss = make_update(make_cfg, *overrides)
    compiled, compiled_loss = make_update(make_cfg, *overrides, "compile.compile=true")
    torch.testing.assert_close(parameters(eager_loss), parameters(compiled_loss), rtol=0, atol=0)
    for step in range(4):
        batch = recipe_batch(step)
        torch.manual_seed(step)
        eager_td = eager(batch.clone(), "eager")
        torch.manual_seed(step)
        compiled_td = compiled(batch.clone(), "compiled")
        for key in (*eager_loss.loss_keys, "grad_norm", "logits_accuracy"):
            torch.testing.assert_close(compiled_td[key], eager_td[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parameters(compiled_loss), parameters(eager_loss), rtol=1e-4, atol=1e-5)
    assert not torch.equal(parameters(eager_loss), parameters(make_update(make_cfg, *overrides)[1]))


def test_bf16_autocast_keeps_energies_and_losses_in_float32(make_cfg):
    _, loss_module = make_update(make_cfg, *RECIPE)
    x, y = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x.bfloat16() @ y.bfloat16().transpose(-1, -2)).dtype == torch.bfloat16
        logits = pairwise_energy(x.bfloat16(), y.bfloat16(), "scaled_dot")
        with loss_module.critic_network_params.to_module(loss_module.critic_network):
            representation = loss_module.critic_network.encode_goal(torch.randn(8, 3))
        loss_td = loss_module(recipe_batch(0))
    assert logits.dtype == torch.float32
    assert representation.dtype == torch.bfloat16  # the networks do run in bf16
    for key in (*loss_module.loss_keys, "logits_positive", "entropy"):
        assert loss_td[key].dtype == torch.float32, key


def test_bf16_autocast_update_learns_as_float32_does(make_cfg):
    """Under bf16 autocast, the critic learns which goal belongs to which transition as in float32: on
    a fixed batch, binary NCE falls to a third of its start and the accuracy climbs far above chance
    (1/32), each within a few percent of the float32 run's."""
    results = {}
    for precision in ("", "bfloat16"):
        update, _ = make_update(make_cfg, *RECIPE, "optim.lr=3e-3", f"precision.autocast={precision!r}")
        batch = recipe_batch(0)
        first = update(batch, "first")["loss_critic"].item()
        for step in range(300):
            last = update(batch, f"step {step}")
        results[precision] = (first, last["loss_critic"].item(), last["logits_accuracy"].item())
    for first, loss, accuracy in results.values():
        assert loss < first / 3 and accuracy > 0.5
    (_, loss32, accuracy32), (_, loss16, accuracy16) = results[""], results["bfloat16"]
    assert loss16 == pytest.approx(loss32, rel=0.1) and accuracy16 == pytest.approx(accuracy32, abs=0.1)


def test_nonfinite_loss_stops_before_the_step_or_skips_the_batch(make_cfg):
    batch = recipe_batch(0)
    batch["observation"][0, 0] = float("nan")
    for on_nonfinite in ("stop", "skip"):
        update, loss_module = make_update(make_cfg, *RECIPE, f"optim.on_nonfinite={on_nonfinite}")
        before = parameters(loss_module)
        if on_nonfinite == "stop":
            with pytest.raises(NonFiniteError, match="non-finite at the test"):
                update(batch, "at the test")
            torch.testing.assert_close(parameters(loss_module), before, rtol=0, atol=0)
            continue
        assert update(batch, "at the test") is None
        torch.testing.assert_close(parameters(loss_module), before, rtol=0, atol=0)
        assert update(recipe_batch(1), "after") is not None  # the next finite batch is applied
        assert not torch.equal(parameters(loss_module), before)


def test_actor_layer_norm_switch(make_cfg):
    for actor_layer_norm, expected in (("true", 2), ("false", 0)):
        cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", f"model.actor_layer_norm={actor_layer_norm}")
        actor, critic = build_agent(cfg, FakeEnvSpecs())
        assert sum(isinstance(m, nn.LayerNorm) for m in actor.modules()) == expected
        assert sum(isinstance(m, nn.LayerNorm) for m in critic.modules()) == 2 * 2 * 2  # 2 critics x (phi, psi)
    # By default the policy follows model.use_layer_norm, as it did before it had a key of its own.
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", "model.use_layer_norm=false")
    actor, critic = build_agent(cfg, FakeEnvSpecs())
    assert not any(isinstance(m, nn.LayerNorm) for m in (*actor.modules(), *critic.modules()))
