import functools
import os
import sys
from pathlib import Path

import pytest
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


@pytest.fixture
def make_cfg():
    """Compose config.yaml with overrides, as the command line would."""

    def _make(*overrides):
        with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
            return compose(config_name="config", overrides=list(overrides))

    return _make


@functools.cache
def rendering_unavailable() -> str:
    """Empty if MuJoCo can render offscreen here, else why not."""
    from contrastive_rl.envs import register_goal_envs
    from contrastive_rl.pixels import rendering_error

    register_goal_envs()
    error = rendering_error("PointMaze_UMaze-v3")
    return f"no offscreen MuJoCo rendering ({error}); see the README's Images section" if error else ""


needs_rendering = pytest.mark.skipif(bool(rendering_unavailable()), reason=rendering_unavailable() or "rendering works")
