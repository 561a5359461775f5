"""OGBench's manipulation datasets regenerated with the env's own oracles: the recipe (episode count and
length, terminals, action range, button states), OGBench's loader, a stopped generation continued, the
goal env and a run from states."""
import signal
import subprocess
import sys
import time

import numpy as np
import ogbench
import pytest

from conftest import ROOT, TINY_OVERRIDES, read_scalar, script
from contrastive_rl import manipspace
from contrastive_rl.config import ConfigError
from contrastive_rl.locomaze import env_id, is_ogbench_name, make_ogbench_env
from contrastive_rl.manipspace import (
    EPISODE_STEPS,
    check_manipulation_dataset,
    full_dataset_name,
    random_action_probability,
    scene_episode_is_healthy,
    subset_name,
    write_manipulation_dataset,
)

CUBE = "cube-single-play-v0"


def test_names_map_to_their_envs_and_a_smaller_dataset_says_so():
    assert subset_name(CUBE, 1000) == CUBE
    assert subset_name(CUBE, 100) == "cube-single-play-100ep-v0"
    assert full_dataset_name("cube-single-play-100ep-v0") == CUBE
    assert env_id("cube-single-play-100ep-v0") == env_id(CUBE) == "cube-single-v0"
    assert env_id("scene-play-v0") == "scene-v0" and env_id("puzzle-3x3-noisy-v0") == "puzzle-3x3-v0"
    assert all(is_ogbench_name(name) for name in ("scene-play-v0", CUBE, "puzzle-3x3-play-10ep-v0"))
    assert not is_ogbench_name("scene-v0")
    with pytest.raises(ConfigError, match="'cube-sextuple-play-v0' is not a manipulation dataset"):
        check_manipulation_dataset("cube-sextuple-play-v0")


def test_noisy_datasets_take_random_actions_at_the_recipe_rate():
    assert random_action_probability(CUBE) == 0.0
    assert random_action_probability("cube-double-noisy-v0") == 0.1
    assert random_action_probability("puzzle-3x3-noisy-v0") == 0.2


def test_scene_health_check_rejects_a_cube_out_of_view():
    qpos = np.zeros((5, 21))
    qpos[:, 14:17] = [0.4, 0.0, 0.02]
    assert scene_episode_is_healthy(qpos)
    qpos[3, 15] = 0.3  # too far right
    assert not scene_episode_is_healthy(qpos)
    qpos[3, 15], qpos[3, 16] = -0.35, 0.07  # far left, in the drawer
    assert scene_episode_is_healthy(qpos)
    qpos[3, 16] = 0.02  # far left, out of the drawer
    assert not scene_episode_is_healthy(qpos)


@pytest.fixture(scope="module")
def cube_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ogbench")
    return write_manipulation_dataset(CUBE, root, episodes=2, workers=2), root


@pytest.mark.slow
def test_a_regenerated_dataset_follows_the_recipe(cube_dataset):
    paths, _ = cube_dataset
    assert [paths[split].name for split in ("train", "val")] == ["cube-single-play-2ep-v0.npz",
                                                                 "cube-single-play-2ep-v0-val.npz"]
    train, val = np.load(paths["train"]), np.load(paths["val"])
    assert set(train) == {"observations", "actions", "terminals", "qpos", "qvel"}
    assert train["observations"].shape == (2 * EPISODE_STEPS, 28) and val["observations"].shape == (EPISODE_STEPS, 28)
    assert train["terminals"].nonzero()[0].tolist() == [EPISODE_STEPS - 1, 2 * EPISODE_STEPS - 1]
    assert train["terminals"].dtype == bool and train["observations"].dtype == np.float32
    assert np.abs(train["actions"]).max() <= 1.0 and train["actions"].std(0).min() > 0.05
    assert train["qpos"].shape == (2 * EPISODE_STEPS, 21) and train["qvel"].shape == (2 * EPISODE_STEPS, 20)
    # The oracle moves the cube: its position (qpos 14:17) changes over the episode.
    assert np.ptp(train["qpos"][:, 14:16], axis=0).max() > 0.05
    assert not np.allclose(train["observations"][:EPISODE_STEPS], train["observations"][EPISODE_STEPS:])


@pytest.mark.slow
def test_ogbench_loader_reads_the_files(cube_dataset):
    paths, _ = cube_dataset
    data = ogbench.utils.load_dataset(str(paths["train"]), add_info=True)
    assert data["observations"].shape == (2 * (EPISODE_STEPS - 1), 28)  # the loader drops each episode's last step
    np.testing.assert_allclose(data["next_observations"][0], np.load(paths["train"])["observations"][1])


@pytest.mark.slow
def test_a_stopped_generation_continues_with_the_same_episodes(tmp_path, cube_dataset, monkeypatch, capsys):
    paths, _ = cube_dataset
    monkeypatch.setattr(manipspace, "CHUNK_EPISODES", 1)
    parts = tmp_path / "cube-single-play-2ep-v0.parts"
    parts.mkdir()
    manipspace.write_chunk(CUBE, 0, range(1, 2), parts / "seed0_episodes00001-00001.npz")
    (parts / "seed0_episodes00002-00002.npz.tmp").write_bytes(b"cut short")  # a chunk a kill interrupted
    continued = write_manipulation_dataset(CUBE, tmp_path, episodes=2, workers=1, progress=True)
    captured = capsys.readouterr()
    assert "continuing cube-single-play-2ep-v0: 1 of 3 episodes made already" in captured.out + captured.err
    for split in ("train", "val"):
        first, again = np.load(paths[split]), np.load(continued[split])
        for key in first:
            np.testing.assert_array_equal(first[key], again[key])
    assert not parts.exists()


@pytest.mark.slow
def test_puzzle_datasets_keep_the_button_states(tmp_path):
    paths = write_manipulation_dataset("puzzle-3x3-play-v0", tmp_path, episodes=1, workers=1)
    train = np.load(paths["train"])
    assert train["button_states"].shape == (EPISODE_STEPS, 9) and train["button_states"].dtype == np.int64
    assert set(np.unique(train["button_states"])) <= {0, 1}


def test_goal_env_goals_are_the_tasks_goals():
    env = make_ogbench_env(CUBE, 200, task_id=3)
    observation, info = env.reset(seed=0)
    np.testing.assert_array_equal(observation["desired_goal"], info["goal"])
    assert observation["observation"].shape == observation["desired_goal"].shape == (28,)
    env.close()


def test_make_dataset_refuses_an_unknown_manipulation_dataset_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "make_dataset.py"), "--ogbench", "cube-sextuple-play-v0",
                             "--root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: 'cube-sextuple-play-v0' is not a manipulation")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_script_trains_offline_from_states_on_a_regenerated_cube_dataset(tmp_path, cube_dataset):
    _, root = cube_dataset
    name = "cube-single-play-2ep-v0"
    result = subprocess.run(
        script("--config-name", "config_ogbench_crl", *TINY_OVERRIDES, f"env.env_name={name}", "env.max_steps=20",
               f"offline.dataset=ogbench:{name}", f"offline.root={root}", "offline.gradient_steps=20",
               "offline.eval_interval=20", "logger.num_eval_episodes=1", "logger.backend=csv",
               f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [step for step, _ in read_scalar(tmp_path / "run", "eval/overall_success")] == [20]
    assert all(read_scalar(tmp_path / "run", f"eval/task{task}_success") for task in range(1, 6))


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_a_stop_keeps_the_finished_chunks_and_the_same_command_continues(tmp_path, stop):
    command = [sys.executable, str(ROOT / "make_dataset.py"), "--ogbench", CUBE, "--episodes", "5", "--workers", "1",
               "--root", str(tmp_path)]
    parts = tmp_path / "cube-single-play-5ep-v0.parts"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(parts.glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == (f"stopped: the episodes made so far are kept under {parts}; "
                                               "the same command continues")
    assert [path.name for path in parts.glob("*.npz")] == ["seed0_episodes00000-00004.npz"]
    assert not (tmp_path / "cube-single-play-5ep-v0.npz").exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "continuing cube-single-play-5ep-v0: 5 of 6 episodes made already" in result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'cube-single-play-5ep-v0.npz'}")
    assert np.load(tmp_path / "cube-single-play-5ep-v0.npz")["terminals"].sum() == 5 and not parts.exists()
