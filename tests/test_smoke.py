"""The training script end to end with tiny frames, as CI's smoke run."""
import math
import subprocess

import pytest

from conftest import TINY_OVERRIDES, needs_rendering, read_scalar, script

pytestmark = pytest.mark.slow  # every test here runs the training script

LOSSES = ("loss_critic", "loss_actor", "loss_alpha")  # the loss module's loss_keys


def logged_losses(run_dir):
    """Every ``train/loss_*`` series the run logged, by name; the three losses must be among them."""
    names = sorted(path.stem for path in run_dir.glob("logs/*/scalars/train/loss_*.csv"))
    assert set(LOSSES) <= set(names), names
    return {name: read_scalar(run_dir, f"train/{name}") for name in names}


def assert_finite_losses(run_dir):
    """Each logged loss series is non-empty and every value is finite (neither NaN nor +-inf)."""
    for name, rows in logged_losses(run_dir).items():
        assert rows, name
        assert all(math.isfinite(value) for _, value in rows), (name, rows)


@pytest.mark.parametrize(
    "env_overrides",
    [
        ["env.env_name=FetchReach-v3"],
        ["env.env_name=PointMaze_UMaze-v3", "env.max_steps=100", "collector.num_envs=2"],
        ["collector.num_envs=2", "collector.worker_processes=true"],
        ["loss.contrastive=td", "model.policy=fixed_std_normal", "loss.bc_coef=0.05", "loss.energy=l2"],
        pytest.param(
            ["env.env_name=PointMaze_UMaze-v3", "env.max_steps=50", "env.from_pixels=true", "env.image_size=48",
             "env.pixels_with_state=true", "model.actor_shares_encoder=true"],
            marks=needs_rendering,
        ),
    ],
    ids=["FetchReach", "PointMaze", "FetchReach-worker-processes", "FetchReach-td", "PointMaze-pixels"],
)
def test_script_runs_end_to_end(tmp_path, env_overrides):
    result = subprocess.run(
        script(*TINY_OVERRIDES, *env_overrides, f"hydra.run.dir={tmp_path}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    success = read_scalar(tmp_path, "eval/success_final")
    assert [step for step, _ in success] == [200, 400]
    assert all(0.0 <= value <= 1.0 for _, value in success)
    loss = read_scalar(tmp_path, "train/loss_critic")
    assert loss and all(math.isfinite(value) for _, value in loss)  # neither NaN nor inf
    assert_finite_losses(tmp_path)
    updates = read_scalar(tmp_path, "train/num_updates")
    assert updates[-1][1] == pytest.approx(0.05 * 400)


@pytest.mark.parametrize(
    "backend,pattern",
    [("wandb", "logs/wandb/offline-run-*/run-*.wandb"), ("tensorboard", "logs/*/events.out.tfevents.*")],
)
def test_logger_backends_write_without_network(tmp_path, backend, pattern):
    result = subprocess.run(
        script(*TINY_OVERRIDES, "collector.total_frames=200", f"logger.backend={backend}", "logger.mode=offline",
               f"hydra.run.dir={tmp_path}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(tmp_path.glob(pattern))
    assert files and files[0].stat().st_size > 0


def test_compiled_update_runs_end_to_end(tmp_path):
    result = subprocess.run(
        script(*TINY_OVERRIDES, "compile.compile=true", "collector.total_frames=300", "logger.eval_interval=300",
               f"hydra.run.dir={tmp_path}"),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loss = read_scalar(tmp_path, "train/loss_critic")
    assert [step for step, _ in loss] == [100, 200, 300] and all(math.isfinite(value) for _, value in loss)
    assert_finite_losses(tmp_path)


@pytest.mark.parametrize("num_envs", [1, 2])
def test_same_seed_gives_the_same_losses(tmp_path, num_envs):
    runs = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        result = subprocess.run(
            script(*TINY_OVERRIDES, "model.cold_init=false", f"collector.num_envs={num_envs}", "optim.utd_ratio=0.2",
                   "env.seed=3", f"hydra.run.dir={run_dir}"),
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append({
            name: read_scalar(run_dir, name)
            for name in ("train/loss_critic", "train/loss_actor", "eval/final_goal_distance", "eval/success_any")
        })
    first, second = runs
    assert first == second
    losses = [value for _, value in first["train/loss_critic"]]
    assert len(set(losses)) == len(losses)  # the losses move, so equal runs are not a constant


def test_nonfinite_loss_stops_with_one_line_or_is_skipped(tmp_path):
    # A learning rate of 1e30 blows the weights up after the first step: every later loss is NaN.
    blow_up = [*TINY_OVERRIDES, "optim.lr=1e30", "model.cold_init=false", "optim.utd_ratio=0.1"]
    stop = subprocess.run(
        script(*blow_up, f"hydra.run.dir={tmp_path / 'stop'}"),
        capture_output=True, text=True, timeout=300,
    )
    assert stop.returncode != 0 and "Traceback" not in stop.stderr
    assert [line for line in stop.stderr.splitlines() if line.startswith("error:")] == [
        "error: non-finite update 2 of 10 at env step 100: loss_critic=nan, loss_actor=nan, loss_alpha=0, "
        "grad_norm=nan; run stopped before applying it"
    ]
    skip = subprocess.run(
        script(*blow_up, "optim.on_nonfinite=skip", f"hydra.run.dir={tmp_path / 'skip'}"),
        capture_output=True, text=True, timeout=300,
    )
    assert skip.returncode == 0, skip.stderr[-3000:]
    skipped = read_scalar(tmp_path / "skip", "train/skipped_updates")
    assert skipped[-1] == (400, 39.0)  # 40 updates in all, the first one finite
