"""OGBench's manipulation datasets regenerated with the env's own oracles: the recipe (episode count and
length, terminals, action range, button states), OGBench's loader, a stopped generation continued, the
oracle solving the evaluation tasks, the goal env, the frames of the visual datasets, runs from states
and from pixels, and bad input."""
import signal
import subprocess
import sys
import time

import numpy as np
import ogbench
import pytest
import torch

from conftest import ROOT, TINY_OVERRIDES, check_config, read_scalar, script
from contrastive_rl.data import manipspace
from contrastive_rl.errors import ConfigError
from contrastive_rl.data.locomaze import load_ogbench_transitions
from contrastive_rl.envs.ogbench import (
    env_id,
    episode_steps,
    full_dataset_name,
    is_ogbench_name,
    make_ogbench_env,
    state_dataset_name,
    subset_episodes,
)
from contrastive_rl.data.manipspace import (
    EPISODE_STEPS,
    FrameRenderer,
    check_manipulation_dataset,
    make_env,
    random_action_probability,
    scene_episode_is_healthy,
    subset_name,
    write_manipulation_dataset,
)
from contrastive_rl.envs.pixels import GOAL_PIXELS_KEY, PIXELS_KEY

CUBE = "cube-single-play-v0"


def test_names_map_to_their_envs_and_a_smaller_dataset_says_so():
    assert subset_name(CUBE, 1000) == CUBE
    assert subset_name(CUBE, 100) == "cube-single-play-100ep-v0"
    assert full_dataset_name("cube-single-play-100ep-v0") == CUBE
    assert (subset_episodes("cube-single-play-100ep-v0"), subset_episodes(CUBE)) == (100, None)
    assert env_id("cube-single-play-100ep-v0") == env_id(CUBE) == "cube-single-v0"
    assert env_id("scene-play-v0") == "scene-v0" and env_id("puzzle-3x3-noisy-v0") == "puzzle-3x3-v0"
    assert all(is_ogbench_name(name) for name in ("scene-play-v0", CUBE, "puzzle-3x3-play-10ep-v0"))
    assert not is_ogbench_name("scene-v0")
    visual = "visual-cube-single-play-25ep-v0"
    assert is_ogbench_name(visual) and env_id(visual) == "visual-cube-single-v0"
    assert state_dataset_name(full_dataset_name(visual)) == CUBE
    check_manipulation_dataset(visual)
    assert (episode_steps(CUBE), episode_steps("scene-play-v0"), episode_steps("puzzle-3x3-play-v0")) == (200, 750, 500)
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
    assert stderr.strip().splitlines()[-1] == (f"stopped: the work done so far is kept under {parts}; "
                                               "the same command continues")
    assert [path.name for path in parts.glob("*.npz")] == ["seed0_episodes00000-00004.npz"]
    assert not (tmp_path / "cube-single-play-5ep-v0.npz").exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "continuing cube-single-play-5ep-v0: 5 of 6 episodes made already" in result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'cube-single-play-5ep-v0.npz'}")
    assert np.load(tmp_path / "cube-single-play-5ep-v0.npz")["terminals"].sum() == 5 and not parts.exists()


def oracle_info(env, info: dict) -> dict:
    """The privileged target entries a data-collection episode gives the cube oracle, for an evaluation
    task of cube-single (its one cube, its goal at the target marker)."""
    from ogbench.manipspace import lie

    base = env.unwrapped
    target = base._cube_target_mocap_ids[0]
    yaw = lie.SO3(wxyz=base._data.mocap_quat[target]).compute_yaw_radians()
    return {**info, "privileged/target_block": 0, "privileged/target_block_pos": base._data.mocap_pos[target].copy(),
            "privileged/target_block_yaw": np.array([yaw])}


def test_the_noiseless_oracle_solves_the_five_evaluation_tasks():
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    env = make_ogbench_env(CUBE, episode_steps(CUBE))
    oracle = CubePlanOracle(env=env.unwrapped, noise=0.0)
    for task in range(1, 6):
        observation, info = env.reset(seed=task, options={"task_id": task})
        oracle.reset(observation["observation"], oracle_info(env, info))
        for _ in range(episode_steps(CUBE)):
            action = np.clip(oracle.select_action(observation["observation"], oracle_info(env, info)), -1, 1)
            observation, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert info["success"], f"task {task}"
    env.close()


def frames_and_renderings(dataset: str, steps: int = 8) -> tuple[list, list, bool]:
    """The visual env's own observations along a random episode, and FrameRenderer's frames at the states
    the episode saves."""
    env = make_env("visual-" + dataset)
    env.reset(seed=0)
    env.step(np.zeros(5))  # not the env's first frame ever (see FrameRenderer)
    observation, _ = env.reset(seed=3)
    renderer = FrameRenderer(dataset, 64)
    env.action_space.seed(3)
    observations, renderings = [], []
    for step in range(steps):
        next_observation, _, _, _, info = env.step(env.action_space.sample())
        state = {key.removeprefix("prev_"): info[key] for key in ("prev_qpos", "prev_qvel", "prev_button_states")
                 if key in info}
        observations.append(observation)
        renderings.append(renderer(state, episode_start=step == 0))
        observation = next_observation
    lagged = renderer.draws_before_last_substep
    renderer.close()
    env.close()
    return observations, renderings, lagged


@pytest.mark.parametrize("dataset", [CUBE, "scene-play-v0"])
def test_a_rendered_frame_equals_the_env_own_pixel_observation_at_that_state(dataset, tmp_path):
    # In a process of its own: a GL context another renderer left current (gymnasium's, in the PointMaze
    # tests) changes the first MuJoCo renderer made after it.
    code = (f"import numpy as np, test_manipspace as t; o, r, lagged = t.frames_and_renderings({dataset!r}); "
            f"np.savez({str(tmp_path / 'frames.npz')!r}, observations=o, renderings=r, lagged=lagged)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    frames = np.load(tmp_path / "frames.npz")
    assert bool(frames["lagged"]) == dataset.startswith("cube")
    np.testing.assert_array_equal(frames["renderings"], frames["observations"])
    assert frames["observations"].shape == (8, 64, 64, 3) and frames["observations"].dtype == np.uint8
    assert frames["observations"].std() > 10 and np.abs(np.diff(frames["observations"].astype(int), axis=0)).max() > 0


def test_visual_goal_env_observes_frames_and_its_goal_is_the_task_goal_frame():
    env = make_ogbench_env("visual-cube-single-play-v0", 200, task_id=2, width=64, height=64)
    observation, info = env.reset(seed=0)
    assert set(observation) == {PIXELS_KEY, GOAL_PIXELS_KEY}
    np.testing.assert_array_equal(observation[GOAL_PIXELS_KEY], info["goal"])
    assert observation[PIXELS_KEY].shape == (64, 64, 3) and observation[PIXELS_KEY].dtype == np.uint8
    assert np.abs(observation[PIXELS_KEY].astype(int) - info["goal"]).max() > 0  # the cube stands elsewhere
    env.close()


@pytest.fixture(scope="module")
def visual_dataset(cube_dataset, tmp_path_factory):
    """A one-episode visual dataset rendered from the first rows of a state dataset (rendering a whole
    episode in software takes minutes)."""
    paths, _ = cube_dataset
    root = tmp_path_factory.mktemp("visual")
    for split, rows in (("train", 24), ("val", 8)):
        state = {key: value[:rows] for key, value in np.load(paths[split]).items()}
        state["terminals"][-1] = True
        np.savez(root / f"cube-single-play-1ep-v0{'-val' if split == 'val' else ''}.npz", **state)
    return write_manipulation_dataset("visual-" + CUBE, root, episodes=1, workers=2), root


@pytest.mark.slow
def test_a_visual_dataset_is_its_state_dataset_with_frames(visual_dataset):
    paths, root = visual_dataset
    assert paths["train"].name == "visual-cube-single-play-1ep-v0.npz"
    visual, state = np.load(paths["train"]), np.load(root / "cube-single-play-1ep-v0.npz")
    assert visual["observations"].shape == (24, 64, 64, 3) and visual["observations"].dtype == np.uint8
    for key in ("actions", "terminals", "qpos", "qvel"):
        np.testing.assert_array_equal(visual[key], state[key])
    renderer = FrameRenderer(CUBE, 64)
    for row in (0, 5):
        frame = renderer({"qpos": state["qpos"][row], "qvel": state["qvel"][row]}, episode_start=row == 0)
        np.testing.assert_array_equal(visual["observations"][row], frame)
    renderer.close()
    assert np.load(paths["val"])["observations"].shape == (8, 64, 64, 3)
    assert not (root / "visual-cube-single-play-1ep-v0.parts").exists()
    data = ogbench.utils.load_dataset(str(paths["train"]))
    assert data["observations"].shape == (23, 64, 64, 3)


@pytest.mark.slow
def test_a_visual_dataset_of_another_image_size_is_refused_in_one_line(visual_dataset):
    _, root = visual_dataset
    transitions = load_ogbench_transitions("visual-cube-single-play-1ep-v0", root, observation_shape=(64, 64, 3),
                                           action_dim=5)
    assert transitions["pixels"].dtype == transitions["next", "pixels"].dtype == torch.uint8
    with pytest.raises(ConfigError, match=r"its frames are 64 x 64 x 3, the env's are 48 x 48 x 3; render it at "
                                          r"this size with python make_dataset.py --ogbench .* --image-size 48"):
        load_ogbench_transitions("visual-cube-single-play-1ep-v0", root, observation_shape=(48, 48, 3), action_dim=5)


def test_a_dataset_file_cut_short_is_refused_in_one_line_and_kept(tmp_path, cube_dataset):
    paths, _ = cube_dataset
    whole = paths["train"].read_bytes()
    cut = tmp_path / "cube-single-play-2ep-v0.npz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=r"could not be read as an OGBench dataset"):
        load_ogbench_transitions("cube-single-play-2ep-v0", tmp_path, observation_shape=(28,), action_dim=5)
    assert cut.read_bytes() == whole[: len(whole) // 2]


@pytest.mark.slow
def test_script_trains_offline_from_pixels_on_a_visual_dataset_and_records_a_video(tmp_path, visual_dataset):
    _, root = visual_dataset
    result = subprocess.run(
        script("--config-name", "config_ogbench_crl_visual", *TINY_OVERRIDES, "env.max_steps=4",
               "offline.dataset=ogbench:visual-cube-single-play-1ep-v0", f"offline.root={root}",
               "offline.gradient_steps=4", "offline.eval_interval=4", "buffer.batch_size=8",
               "logger.num_eval_episodes=1", "logger.video_every=1", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [step for step, _ in read_scalar(tmp_path / "run", "eval/overall_success")] == [4]
    assert list((tmp_path / "run").rglob("*.mp4"))


def compose_preset(name, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        return compose(config_name=name, overrides=list(overrides))


def test_manipulation_presets_take_ogbench_episode_length_and_bc_weight():
    cfg = compose_preset("config_ogbench_crl_manipulation")
    assert (cfg.env.max_steps, cfg.loss.bc_coef, cfg.offline.dataset) == (200, 3.0, "ogbench:cube-single-play-v0")
    assert compose_preset("config_ogbench_crl_manipulation", "env.env_name=scene-play-v0").env.max_steps == 750
    visual = compose_preset("config_ogbench_crl_visual")
    assert (visual.env.max_steps, visual.env.from_pixels, visual.model.encoder, visual.buffer.batch_size) == (
        200, True, "impala_small", 256)
    assert check_config(visual) == "visual-cube-single-play-v0"


def test_images_follow_the_dataset_name_in_one_line():
    with pytest.raises(ConfigError, match=r"^env.from_pixels=False is not allowed with env.env_name="
                                          r"'visual-cube-single-play-v0': its observations are frames"):
        check_config(compose_preset("config_ogbench_crl_visual", "env.from_pixels=false"))
    with pytest.raises(ConfigError, match=r"^env.from_pixels=True is not allowed with env.env_name="
                                          r"'cube-single-play-v0': its observations are states \(train from pixels "
                                          r"on visual-cube-single-play-v0"):
        check_config(compose_preset("config_ogbench_crl_manipulation", "env.from_pixels=true"))
    with pytest.raises(ConfigError, match=r"^env.max_steps=None is not allowed"):
        check_config(compose_preset("config_ogbench_crl_manipulation", "env.env_name=FetchReach-v4"))


def test_impala_small_encoder_maps_frames_to_512_features_and_trains():
    from contrastive_rl.modules.encoders import ImpalaSmallEncoder

    encoder = ImpalaSmallEncoder(64)
    frames = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    features = encoder(frames)
    assert features.shape == (2, 3, 512) and (features >= 0).all()
    assert encoder.head[0].in_features == 32 * 8 * 8  # three max-pools of stride 2: 64 -> 8
    features.sum().backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in encoder.parameters())


def test_video_env_of_a_state_dataset_renders_ogbench_camera_frames():
    from contrastive_rl.envs.videos import make_video_gym_env

    env = make_video_gym_env(CUBE, 10, 96)
    observation, info = env.reset(seed=0)
    first = env.render()
    env.step(np.ones(5))
    assert first.shape == (96, 96, 3) and first.dtype == np.uint8 and first.std() > 10
    assert np.abs(env.render().astype(int) - first).max() > 0  # the arm moved
    np.testing.assert_array_equal(observation["desired_goal"], info["goal"])
    env.close()
