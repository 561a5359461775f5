"""Offline data: writing Minari datasets, loading them, bad datasets, and training from them."""
import shutil
import signal
import subprocess
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import TINY_OVERRIDES, check_config, needs_rendering, read_scalar, script
from contrastive_rl.errors import ConfigError
from contrastive_rl.envs.goal_envs import register_goal_envs
from contrastive_rl.data.offline import load_goal_transitions, load_offline_data, resolve_dataset, split_into_columns
from contrastive_rl.data.replay import FutureGoalReplayBuffer
from contrastive_rl.envs.scripted import make_controller
from make_dataset import make_dataset

MAZE_DIMS = dict(observation_dim=4, goal_dim=2, action_dim=2)


@pytest.fixture(scope="module")
def maze_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    stats = make_dataset(
        "PointMaze_UMaze-v3", policy="scripted", episodes=6, max_steps=30,
        dataset_id="pointmaze/umaze-test-v0", root=root, noise=0.3, random_prob=0.2,
    )
    return root, stats


def test_scripted_controllers_reach_their_goals():
    register_goal_envs()
    for env_name, steps in [("PointMaze_UMaze-v3", 150), ("FetchReach-v4", 50)]:
        env = gym.make(env_name, max_episode_steps=steps)
        controller = make_controller(env_name, env)
        successes = []
        for episode in range(10):
            observation, _ = env.reset(seed=episode)
            for _ in range(steps):
                observation, _, _, _, info = env.step(controller(observation))
            successes.append(bool(info.get("success", info.get("is_success", False))))
        assert np.mean(successes) >= 0.9, env_name


def test_dataset_round_trip_keeps_episodes_and_values(maze_dataset):
    root, stats = maze_dataset
    assert 0.0 <= stats["success_final"] <= stats["success_any"] <= 1.0
    transitions = load_goal_transitions("pointmaze/umaze-test-v0", str(root), **MAZE_DIMS)
    assert transitions.shape == (6 * 30,)
    done = transitions["next", "done"].squeeze(-1)
    assert done.nonzero().squeeze(-1).tolist() == [29, 59, 89, 119, 149, 179]
    assert transitions["observation"].abs().sum() > 0
    # Within an episode the next observation is the following step's observation.
    within = ~done[:-1]
    torch.testing.assert_close(transitions["next", "observation"][:-1][within], transitions["observation"][1:][within])
    # The achieved goal of a PointMaze state is its position.
    torch.testing.assert_close(transitions["next", "achieved_goal"], transitions["next", "observation"][:, :2])
    # The same dataset by directory.
    assert resolve_dataset(str(root / "pointmaze" / "umaze-test-v0")) == ("pointmaze/umaze-test-v0", root.resolve())


def test_offline_goals_stay_in_their_episode(maze_dataset):
    root, _ = maze_dataset
    transitions = load_goal_transitions("pointmaze/umaze-test-v0", str(root), **MAZE_DIMS)
    episode = torch.arange(6).repeat_interleave(30).float()
    transitions["observation"][:, 0] = episode  # tag each step with its episode
    transitions["next", "achieved_goal"][:, 0] = episode
    buffer = FutureGoalReplayBuffer(capacity=180, num_envs=2, batch_size=2000, gamma=0.9)
    buffer.extend(split_into_columns(transitions, 2))
    sample = buffer.sample()
    assert (sample["desired_goal"][:, 0] == sample["observation"][:, 0]).all()


def make_pendulum_dataset(root):
    from minari import DataCollector

    from contrastive_rl.data.offline import _datasets_path

    collector = DataCollector(gym.make("Pendulum-v1", max_episode_steps=5), record_infos=False)
    collector.reset(seed=0)
    for _ in range(5):
        collector.step(collector.action_space.sample())
    with _datasets_path(root):
        collector.create_dataset(dataset_id="pendulum/random-v0", algorithm_name="random")


def test_bad_datasets_are_named(tmp_path, maze_dataset, make_cfg):
    root, _ = maze_dataset
    with pytest.raises(ConfigError, match="offline.dataset='nowhere/none-v0' not found"):
        resolve_dataset("nowhere/none-v0", str(tmp_path))
    broken = tmp_path / "broken" / "bad-v0" / "data"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text('{"dataset_id": "broken/bad-v0"}')
    (broken / "main_data.hdf5").write_bytes(b"not an hdf5 file")
    with pytest.raises(ConfigError, match="could not be read as a Minari dataset"):
        load_goal_transitions(str(broken.parent), **MAZE_DIMS)
    (broken / "metadata.json").write_text("{not json")
    with pytest.raises(ConfigError, match="malformed metadata.json"):
        resolve_dataset(str(broken.parent))
    make_pendulum_dataset(tmp_path)
    with pytest.raises(ConfigError, match="'pendulum/random-v0' has no goals"):
        load_goal_transitions("pendulum/random-v0", str(tmp_path), **MAZE_DIMS)
    cfg = make_cfg("env.env_name=FetchReach-v4", "offline.dataset=pointmaze/umaze-test-v0", f"offline.root={root}")
    with pytest.raises(ConfigError, match="does not match the env: its observation has 4 dimensions, the env's has 10"):
        load_offline_data(cfg, check_config(cfg))
    cfg = make_cfg("env.env_name=PointMaze_UMaze-v3", "offline.dataset=pointmaze/umaze-test-v0", f"offline.root={root}")
    with pytest.raises(ConfigError, match="buffer.batch_size=2048 .* holds 180 transitions"):
        load_offline_data(cfg, check_config(cfg))


@pytest.mark.slow
def test_script_refuses_a_missing_dataset_before_writing_anything(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        script("offline.dataset=nowhere/none-v0", f"offline.root={tmp_path}", f"hydra.run.dir={run_dir}"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: offline.dataset='nowhere/none-v0' not found: no Minari dataset at {tmp_path}/nowhere/none-v0 "
        "(give an id under offline.root or a dataset directory; make_dataset.py writes one)"
    ]
    assert not (run_dir / "logs").exists()


def test_script_refuses_a_dataset_with_a_non_finite_value_in_one_line(tmp_path, maze_dataset):
    import h5py

    root, _ = maze_dataset
    copy = tmp_path / "datasets"
    shutil.copytree(root, copy)
    data_file = copy / "pointmaze" / "umaze-test-v0" / "data" / "main_data.hdf5"
    with h5py.File(data_file, "r+") as file:
        file["episode_2/observations/desired_goal"][7, 0] = np.nan
    run_dir = tmp_path / "run"
    result = subprocess.run(
        script(*TINY_OVERRIDES, "env.env_name=PointMaze_UMaze-v3", "env.max_steps=30",
               "offline.dataset=pointmaze/umaze-test-v0", f"offline.root={copy}", f"hydra.run.dir={run_dir}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: offline.dataset='pointmaze/umaze-test-v0' holds a non-finite value: {data_file}, episode 2, "
        "field 'observations/desired_goal', step 7 (nan)"
    )
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("finetune", [False, True], ids=["offline", "offline-then-online"])
def test_script_trains_from_a_dataset(tmp_path, maze_dataset, finetune):
    root, _ = maze_dataset
    result = subprocess.run(
        script(*TINY_OVERRIDES, "env.env_name=PointMaze_UMaze-v3", "env.max_steps=30",
               "offline.dataset=pointmaze/umaze-test-v0", f"offline.root={root}", "offline.gradient_steps=20",
               "offline.eval_interval=10", f"offline.finetune={finetune}", f"hydra.run.dir={tmp_path}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [success] = tmp_path.glob("logs/*/scalars/eval/success_final.csv")
    steps = [int(line.split(",")[0]) for line in success.read_text().splitlines()]
    assert steps == ([10, 20, 220, 420] if finetune else [10, 20])
    [updates] = tmp_path.glob("logs/*/scalars/train/num_updates.csv")
    assert float(updates.read_text().splitlines()[-1].split(",")[1]) == (20 + 20 if finetune else 20)


def kill_after_a_checkpoint(command: list[str], run_dir, resumable) -> dict:
    """Run ``command`` and SIGKILL it once its checkpoint's progress satisfies ``resumable``; return
    that progress."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (run_dir / "checkpoint.pt").exists():
                progress = torch.load(run_dir / "checkpoint.pt", weights_only=False)["progress"]
                if resumable(progress):
                    process.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        process.wait()
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["progress"]


def logged_curves(run_dir) -> dict:
    # A resumed run logs again the steps after its checkpoint: the later line of a step wins.
    names = ("train/loss_critic", "train/loss_actor", "eval/final_goal_distance", "eval/success_any")
    return {name: dict(read_scalar(run_dir, name)) for name in names}


@pytest.mark.slow
@pytest.mark.parametrize("finetune", [False, True], ids=["killed-offline", "killed-online-after-offline"])
def test_offline_run_killed_and_resumed_equals_the_uninterrupted_one(tmp_path, maze_dataset, finetune):
    """Bit-exact on CPU. Offline: killed between gradient-step checkpoints. Offline then online: killed
    in the online phase, with a buffer small enough that online rows overwrite the dataset's."""
    root, _ = maze_dataset
    run = [*TINY_OVERRIDES, "env.env_name=PointMaze_UMaze-v3", "env.max_steps=30", "model.cold_init=false",
           "offline.dataset=pointmaze/umaze-test-v0", f"offline.root={root}", "offline.eval_interval=20",
           "buffer.size=300", "optim.utd_ratio=0.1"]
    if finetune:
        run += ["offline.gradient_steps=20", "offline.finetune=true", "collector.total_frames=800",
                "checkpoint.interval=200"]
        resumable = lambda progress: 0 < progress["collected_frames"] < 800  # noqa: E731
    else:
        run += ["offline.gradient_steps=200", "checkpoint.interval=40"]
        resumable = lambda progress: 0 < progress["num_updates"] < 200  # noqa: E731
    uninterrupted = subprocess.run(script(*run, f"hydra.run.dir={tmp_path / 'a'}"), capture_output=True, text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    killed_dir = tmp_path / "b"
    progress = kill_after_a_checkpoint(script(*run, f"hydra.run.dir={killed_dir}"), killed_dir, resumable)
    assert resumable(progress), progress  # killed before the end
    resumed = subprocess.run(script(*run, "checkpoint.resume=auto", f"hydra.run.dir={killed_dir}"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, found = logged_curves(tmp_path / "a"), logged_curves(killed_dir)
    assert found == expected
    last_step = 20 + 800 if finetune else 200
    assert max(expected["train/loss_critic"]) == last_step


@needs_rendering
def test_pixel_dataset_round_trip_and_size_check(tmp_path):
    make_dataset(
        "PointMaze_UMaze-v3", policy="scripted", episodes=2, max_steps=10,
        dataset_id="pointmaze/pixels-v0", root=tmp_path, image_size=40,
    )
    transitions = load_goal_transitions("pointmaze/pixels-v0", str(tmp_path), image_size=40, **MAZE_DIMS)
    assert transitions["pixels"].shape == (20, 40, 40, 3) and transitions["pixels"].dtype == torch.uint8
    torch.testing.assert_close(transitions["next", "pixels"][:9], transitions["pixels"][1:10])
    with pytest.raises(ConfigError, match="has no 48 x 48 images .* --from-pixels --image-size 48"):
        load_goal_transitions("pointmaze/pixels-v0", str(tmp_path), image_size=48, **MAZE_DIMS)
    with pytest.raises(ConfigError, match="has no 40 x 40 images \\(found none\\)"):
        make_dataset("PointMaze_UMaze-v3", policy="random", episodes=1, max_steps=5,
                     dataset_id="pointmaze/states-v0", root=tmp_path)
        load_goal_transitions("pointmaze/states-v0", str(tmp_path), image_size=40, **MAZE_DIMS)
