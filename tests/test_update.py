"""The gradient update: compiled equals eager and compiles once, no host round-trip inside it, bf16
autocast keeps the losses in float32 and learns, the device-side non-finite guard, the speed plan, the
OGBench actor without LayerNorm."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import stable_contrastive_rl
from benchmarks import update_speed
from contrastive_rl.errors import ConfigError, NonFiniteError
from contrastive_rl.trainers.config import validate_config
from contrastive_rl.objectives.energies import pairwise_energy
from contrastive_rl.trainers.update import CPU_COMPILE_MIN_UPDATES, GradientUpdate, SpeedPlan
from conftest import FakeEnvSpecs, StateGoalSpecs, build_agent, build_loss_module, make_batch, state_goal_batch
from utils import make_optimizer, make_target_updater

RECIPE = ("buffer.actor_goals=uniform_future", "loss.actor_loss=ddpg_bc", "model.policy=fixed_std_normal",
          "model.policy_std=1.0", "loss.contrastive=binary_nce", "loss.energy=scaled_dot", "loss.bc_coef=0.03",
          "loss.random_goal_fraction=0.0", "model.cold_init=false", "model.activation=gelu",
          "model.actor_layer_norm=false")
TMD = ("loss.contrastive=tmd", "loss.energy=mrn", "loss.actor_loss=ddpg_bc", "model.policy=fixed_std_normal",
       "loss.quasimetric_components=2", "loss.bc_coef=0.1")
# Every critic loss, energy and actor branch that compiles, each in at least one set.
LOSS_OPTIONS = {
    "ogbench_recipe": RECIPE,
    "infonce": ("loss.contrastive=infonce",),
    "td": ("loss.contrastive=td",),
    # Cold init would start l2 at every distance ~0, where its clamped sqrt passes no gradient.
    "td_infonce": ("loss.contrastive=td_infonce", "loss.energy=l2", "model.cold_init=false"),
    "symmetric_infonce": ("loss.contrastive=symmetric_infonce", "loss.energy=cosine", "loss.learn_temperature=true",
                          "loss.auto_alpha=true", "loss.alpha_init=0.1", "loss.bc_coef=0.1",
                          "loss.random_goal_fraction=0.5"),
    "binary_nce": ("loss.contrastive=binary_nce", "loss.weight_negatives=true", "loss.logsumexp_coef=0.01"),
    "infonce_iqe": ("loss.contrastive=infonce", "loss.energy=iqe", "loss.quasimetric_components=2"),
    "tmd": TMD,
}
STATE_GOAL_OPTIONS = ("tmd",)  # goals are full observations
# Piecewise energies (a max, a sort): a rounding difference can flip which coordinate wins or how a tie
# breaks, so after the first step the compiled update's gradient norm drifts from the eager one's; their
# losses stay close.
PIECEWISE_OPTIONS = {"infonce_iqe", "tmd"}


def make_update(make_cfg, *overrides, seed=0, specs=None):
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", "model.embed_dim=8", "device=cpu", *overrides)
    torch.manual_seed(seed)
    actor, critic = build_agent(cfg, specs or FakeEnvSpecs())
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


def option_update(make_cfg, name, *overrides):
    """The update of ``LOSS_OPTIONS[name]`` and a maker of its batches."""
    if name in STATE_GOAL_OPTIONS:
        update, loss_module = make_update(make_cfg, *LOSS_OPTIONS[name], *overrides, specs=StateGoalSpecs())
        return update, loss_module, lambda seed: state_goal_batch(32, seed=seed)
    update, loss_module = make_update(make_cfg, *LOSS_OPTIONS[name], *overrides)
    return update, loss_module, recipe_batch


def parameters(loss_module):
    return torch.cat([p.detach().flatten() for p in loss_module.parameters()])


def optimizer_state(update):
    return torch.cat([value.detach().flatten().float() for state in update.optimizer.state.values()
                      for value in state.values() if torch.is_tensor(value)])


@pytest.mark.parametrize("name", ["ogbench_recipe", "infonce", "td"])
def test_compiled_update_equals_eager_and_compiles_once(make_cfg, name):
    """The compiled update (loss, backward traced into the graph, the guard) takes the same steps as
    the eager one, and once warm, updates on fresh batches compile nothing again (what a CUDA graph's
    capture needs: a recompilation there is what crashed it). The compiled graph draws its random
    numbers as eager code does (``fallback_random``), so that the sampled policies' actions agree."""
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        compare_compiled_with_eager(make_cfg, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in LOSS_OPTIONS if name not in ("ogbench_recipe", "infonce", "td")])
def test_every_loss_option_compiles_once(make_cfg, name):
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        compare_compiled_with_eager(make_cfg, name)


def compare_compiled_with_eager(make_cfg, name):
    import torch._dynamo

    torch._dynamo.reset()
    eager, eager_loss, batches = option_update(make_cfg, name)
    compiled, compiled_loss, _ = option_update(make_cfg, name, "compile.compile=true")
    torch.testing.assert_close(parameters(eager_loss), parameters(compiled_loss), rtol=0, atol=0)
    piecewise = name in PIECEWISE_OPTIONS
    tolerance = {"rtol": 5e-2, "atol": 2e-3} if piecewise else {"rtol": 1e-4, "atol": 1e-5}
    for step in range(6):
        batch = batches(step)
        torch.manual_seed(step)
        eager_td = eager(batch.clone())
        torch.manual_seed(step)
        # Warm after the eager call and the compiling one; any later recompilation raises.
        with torch._dynamo.config.patch(error_on_recompile=step >= 2):
            compiled_td = compiled(batch.clone())
        # The accuracy counts ties of near-equal logits, which a piecewise energy's rounding can flip.
        compared = ("grad_norm", "logits_accuracy") if step == 0 or not piecewise else ()
        for key in (*eager_loss.loss_keys, *compared):
            torch.testing.assert_close(compiled_td[key], eager_td[key], **tolerance)
        assert compiled_td["update_applied"].item()
    torch.testing.assert_close(parameters(compiled_loss), parameters(eager_loss), **tolerance)
    assert not torch.equal(parameters(eager_loss), parameters(option_update(make_cfg, name)[1]))


class HostReads(TorchDispatchMode):
    """Records the ops that bring a tensor's value to the host (``.item()``, ``bool()``, a Python branch
    on a tensor) or make a tensor from host values (``torch.tensor``): none may run in a CUDA graph."""

    HOST_OPS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.item")

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.HOST_OPS):
            import traceback

            stack = "".join(traceback.format_stack(limit=12))
            # TorchRL's TanhNormal checks its bounds eagerly, and skips that under compile and capture.
            if "distributions/continuous.py" not in stack:
                self.found.append(f"{func}:\n{stack}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(LOSS_OPTIONS))
def test_the_update_reads_nothing_back_to_the_host(make_cfg, name):
    update, _, batches = option_update(make_cfg, name)
    update(batches(0))  # the optimizer's state is made at the first step
    with HostReads() as reads:
        update(batches(1))
    assert not reads.found, reads.found[0]


def test_the_script_and_the_benchmark_share_the_update():
    assert stable_contrastive_rl.GradientUpdate is update_speed.GradientUpdate is GradientUpdate


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
        first = update(batch)["loss_critic"].item()
        for _ in range(300):
            last = update(batch)
        results[precision] = (first, last["loss_critic"].item(), last["logits_accuracy"].item())
    for first, loss, accuracy in results.values():
        assert loss < first / 3 and accuracy > 0.5
    (_, loss32, accuracy32), (_, loss16, accuracy16) = results[""], results["bfloat16"]
    assert loss16 == pytest.approx(loss32, rel=0.1) and accuracy16 == pytest.approx(accuracy32, abs=0.1)


def where(index):
    return f"update {index + 1} at the test"


@pytest.mark.parametrize("overrides", [RECIPE, ("loss.contrastive=td",)], ids=["ogbench_recipe", "td"])
def test_nonfinite_update_is_undone_on_the_device(make_cfg, overrides):
    """A NaN batch changes no parameter, no Adam state and no target critic; under ``skip`` the next
    finite batch is applied and the round's summary counts one skip; under ``stop`` no later update is
    applied and the summary raises, naming the update."""
    nan_batch = recipe_batch(0)
    nan_batch["observation"][0, 0] = float("nan")
    for on_nonfinite in ("skip", "stop"):
        update, loss_module = make_update(make_cfg, *overrides, f"optim.on_nonfinite={on_nonfinite}")
        first = update(recipe_batch(5))  # a step first, so that Adam's state is not all zeros
        before, state_before = parameters(loss_module), optimizer_state(update)
        bad = update(nan_batch)
        assert not bad["update_applied"].item() and bad["loss_critic"].isnan()
        torch.testing.assert_close(parameters(loss_module), before, rtol=0, atol=0)
        torch.testing.assert_close(optimizer_state(update), state_before, rtol=0, atol=0)
        after = update(recipe_batch(1))
        if on_nonfinite == "skip":
            assert after["update_applied"].item()
            assert not torch.equal(parameters(loss_module), before)
            mean, skipped = update.summarize([first, bad, after], where)
            assert skipped == 1
            torch.testing.assert_close(mean["loss_critic"], (first["loss_critic"] + after["loss_critic"]) / 2)
        else:
            assert not after["update_applied"].item()
            torch.testing.assert_close(parameters(loss_module), before, rtol=0, atol=0)
            with pytest.raises(NonFiniteError, match="non-finite update 2 at the test: loss_critic=nan"):
                update.summarize([first, bad, after], where)


def cuda():
    return torch.device("cuda")  # a device name: resolving a plan starts nothing on it


@pytest.mark.parametrize("device, updates, world_size, expected", [
    (cuda(), 10, 1, SpeedPlan(compile=True, cudagraphs=True, tf32=True)),
    (cuda(), 10, 2, SpeedPlan(compile=True, cudagraphs=False, tf32=True)),
    (torch.device("cpu"), CPU_COMPILE_MIN_UPDATES - 1, 1, SpeedPlan(compile=False, cudagraphs=False, tf32=False)),
    (torch.device("cpu"), CPU_COMPILE_MIN_UPDATES, 1, SpeedPlan(compile=True, cudagraphs=False, tf32=False)),
])
def test_auto_speed_plan_uses_the_device(make_cfg, device, updates, world_size, expected):
    assert SpeedPlan.resolve(make_cfg(), device, updates, world_size) == expected


def test_explicit_speed_options_win_over_auto(make_cfg):
    cfg = make_cfg("compile.compile=false", "precision.tf32=false")
    plan = SpeedPlan.resolve(cfg, cuda(), 10)
    assert plan == SpeedPlan(compile=False, cudagraphs=False, tf32=False)
    assert plan.describe() == "eager float32 updates (compile.compile=true compiles them)"
    assert plan.warmup_updates == 1
    plan = SpeedPlan.resolve(make_cfg(), cuda(), 10)
    assert plan.describe() == ("TF32 matmuls, torch.compile, CUDA graphs (off: precision.tf32=false "
                               "compile.compile=false compile.cudagraphs=false)")
    assert plan.warmup_updates == 6  # one eager, one compiling, three compiled, one captured
    assert SpeedPlan.resolve(make_cfg("compile.compile=true"), torch.device("cpu"), 10).compile


@pytest.mark.parametrize("key", ["compile.compile", "compile.cudagraphs", "precision.tf32"])
def test_speed_options_take_true_false_or_auto(make_cfg, key):
    validate_config(make_cfg(f"{key}=auto"))
    with pytest.raises(ConfigError, match=rf"^{key}='fast' is not allowed: it must be true, false or auto$"):
        validate_config(make_cfg(f"{key}=fast"))


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
