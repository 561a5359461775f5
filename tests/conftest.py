"""Shared fixtures and helpers of the test suite. Test modules import the helpers from here
(``from conftest import ...``), never from each other."""
import csv
import functools
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")

TINY_OVERRIDES = [
    "collector.total_frames=400",
    "collector.frames_per_batch=100",
    "collector.init_random_frames=100",
    "buffer.size=1000",
    "buffer.batch_size=32",
    "model.hidden_dim=32",
    "model.num_layers=2",
    "model.embed_dim=8",
    "optim.utd_ratio=0.05",
    "logger.backend=csv",
    "logger.eval_interval=200",
    "logger.num_eval_episodes=2",
]


# ====================================================================
# Config
# ------


@pytest.fixture
def make_cfg():
    """Compose config.yaml with overrides, as the command line would."""

    def _make(*overrides):
        with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
            return compose(config_name="config", overrides=list(overrides))

    return _make


def check_config(cfg, world_size: int = 1) -> str:
    """What the training script checks before it starts: the config's values, then the env's own
    checks; returns the env id that ``env.env_name`` resolves to. Raises ConfigError."""
    from contrastive_rl.trainers.config import validate_config
    from contrastive_rl.envs.goal_envs import resolve_goal_env

    validate_config(cfg, world_size)
    return resolve_goal_env(cfg)


# ====================================================================
# The training script as a subprocess
# -----------------------------------


def script(*overrides) -> list[str]:
    """The command line that runs the training script with Hydra ``overrides``."""
    return [sys.executable, str(ROOT / "stable_contrastive_rl.py"), *overrides]


def read_scalar(run_dir, name) -> list[tuple[int, float]]:
    """``(step, value)`` rows of the csv logger's scalar ``name`` in a run directory."""
    [path] = Path(run_dir).glob(f"logs/*/scalars/{name}.csv")
    with open(path) as f:
        return [(int(step), float(value)) for step, value in csv.reader(f)]


# ====================================================================
# Rendering
# ---------


@functools.cache
def rendering_unavailable() -> str:
    """Empty if MuJoCo can render offscreen here, else why not."""
    from contrastive_rl.envs.goal_envs import register_goal_envs
    from contrastive_rl.envs.pixels import rendering_error

    register_goal_envs()
    error = rendering_error("PointMaze_UMaze-v3")
    return f"no offscreen MuJoCo rendering ({error}); see docs/running.md, Videos of evaluation episodes" if error else ""


needs_rendering = pytest.mark.skipif(bool(rendering_unavailable()), reason=rendering_unavailable() or "rendering works")


# ====================================================================
# Agents and losses without an env
# --------------------------------

OBS, ACT, GOAL = 5, 2, 3


class FakeEnvSpecs:
    """The specs make_agent reads, without starting an env."""

    def __init__(self):
        from torchrl.data import Bounded, Composite, Unbounded

        self.observation_spec = Composite(
            observation=Unbounded(OBS), desired_goal=Unbounded(GOAL), achieved_goal=Unbounded(GOAL)
        )
        self.full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(ACT,)))


STATE = 4  # goals are full observations, as in OGBench


class StateGoalSpecs:
    """The specs make_agent reads, with goals the size of observations."""

    def __init__(self):
        from torchrl.data import Bounded, Composite, Unbounded

        self.observation_spec = Composite(
            observation=Unbounded(STATE), desired_goal=Unbounded(STATE), achieved_goal=Unbounded(STATE)
        )
        self.full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(2,)))


def state_goal_batch(batch_size=6, seed=0):
    """A batch of StateGoalSpecs' sizes, with the next states and their goals."""
    from tensordict import TensorDict

    generator = torch.Generator().manual_seed(seed)
    return TensorDict(
        observation=torch.randn(batch_size, STATE, generator=generator),
        action=torch.rand(batch_size, 2, generator=generator) * 2 - 1,
        desired_goal=torch.randn(batch_size, STATE, generator=generator),
        next={"observation": torch.randn(batch_size, STATE, generator=generator),
              "achieved_goal": torch.randn(batch_size, STATE, generator=generator)},
        batch_size=[batch_size],
    )


def make_batch(batch_size=16, seed=0):
    """A batch of random states, actions in [-1, 1] and goals, with FakeEnvSpecs' sizes."""
    from tensordict import TensorDict

    generator = torch.Generator().manual_seed(seed)
    return TensorDict(
        observation=torch.randn(batch_size, OBS, generator=generator),
        action=torch.rand(batch_size, ACT, generator=generator) * 2 - 1,
        desired_goal=torch.randn(batch_size, GOAL, generator=generator),
        batch_size=[batch_size],
    )


def build_agent(cfg, env, device="cpu"):
    """``utils.make_agent`` with the data keys of ``cfg``."""
    from contrastive_rl.envs.goal_envs import DataKeys
    from utils import make_agent

    return make_agent(cfg, env, DataKeys.from_config(cfg), device)


def build_loss_module(cfg, actor, critic, world_size=1):
    """``utils.make_loss_module`` with the data keys of ``cfg``."""
    from contrastive_rl.envs.goal_envs import DataKeys
    from utils import make_loss_module

    return make_loss_module(cfg, actor, critic, DataKeys.from_config(cfg), world_size)


def make_loss(make_cfg, *overrides):
    """A small agent on FakeEnvSpecs and its loss module: ``(cfg, loss_module)``."""
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", "model.embed_dim=8", *overrides)
    actor, critic = build_agent(cfg, FakeEnvSpecs())
    return cfg, build_loss_module(cfg, actor, critic)


# ====================================================================
# Replay buffers
# --------------


def filled_buffer(steps=(1,), buffer=None, *, chunk_length=10_000):
    """``buffer`` (by default a new, empty one) extended with one deterministic chunk per step of
    ``steps``, in order: ``filled_buffer(range(1, k + 1))`` is the buffer of a run that has added the
    chunks of steps 1 to k, and ``filled_buffer(())`` an empty buffer of the same shape.

    The buffer has 2 envs and room for 2.5 chunks, so that it wraps around and overwrites the oldest
    rows; a chunk (seeded with its step) holds ``chunk_length`` time slots per env, about 42 MB by
    default: big enough that writing it to disk takes a while to kill.
    """
    from tensordict import TensorDict

    from contrastive_rl.data.replay import FutureGoalReplayBuffer

    if buffer is None:
        buffer = FutureGoalReplayBuffer(capacity=5 * chunk_length, num_envs=2, batch_size=8, gamma=0.9)
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        shape = (2, chunk_length)
        buffer.extend(TensorDict({
            "observation": torch.randn(*shape, 256, generator=generator),
            "action": torch.rand(*shape, 4, generator=generator) * 2 - 1,
            "desired_goal": torch.randn(*shape, 2, generator=generator),
            "next": {
                "observation": torch.randn(*shape, 256, generator=generator),
                "achieved_goal": torch.randn(*shape, 2, generator=generator),
                "done": torch.rand(*shape, 1, generator=generator) < 0.02,
                "reward": -torch.rand(*shape, 1, generator=generator),
            },
        }, list(shape)))
    return buffer
