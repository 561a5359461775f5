"""OGBench's manipulation datasets (cube, scene, puzzle) regenerated with the scripted oracles that ship
in the ogbench wheel, following OGBench's ``data_gen_scripts/generate_manipspace.py`` and ``commands.sh``.

Each episode: the env made with ``terminate_at_goal=False, mode="data_collection"``, 1001 steps; ``play``
datasets follow a ``PlanOracle`` (action noise 0.1, smoothing 0.5), ``noisy`` ones a ``MarkovOracle``
(min norm 0.4, Gaussian noise of a per-episode scale xi ~ U(0, 0.1), times 1, 1, 1, 3, 10 per action
dimension) with a uniform random action at probability 0.1 (0.2 on puzzle). Whenever the oracle is done,
``set_new_target`` gives it a new task, with the env's cube-stacking probability. Scene episodes that
push the cube out of sight are made again. A dataset is 1000 training episodes and a tenth as many
validation ones, written as OGBench's loader reads them (``<name>.npz``, ``<name>-val.npz``: observations,
actions, terminals, qpos, qvel, and button states where the env has buttons).

Episodes are made in chunks, over processes; an episode's randomness depends on the seed and its own
index alone, so the split over processes does not change the data, and a generation that was stopped
continues from the chunks it had finished (kept under ``<name>.parts/``). ``episodes`` other than the
recipe's writes ``<name>`` with an ``-<N>ep`` tag before its version (``cube-single-play-100ep-v0``).

A ``visual-`` dataset is its state dataset (made first where missing) with each observation replaced
by the 64 x 64 x 3 uint8 frame that OGBench's ``visual-`` env renders at that step's saved state, the
frames rendered in chunks over processes, stopped and continued the same way.
"""
from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np

from contrastive_rl.envs.ogbench import (
    MANIPULATION_DATASETS,
    VISUAL_DATASETS,
    VISUAL_PREFIX,
    env_id,
    full_dataset_name,
    is_visual,
    state_dataset_name,
)
from contrastive_rl.errors import ConfigError

EPISODE_STEPS = 1001
TRAINING_EPISODES = 1000
PLAN_NOISE, PLAN_NOISE_SMOOTHING = 0.1, 0.5
MARKOV_NOISE, MARKOV_MIN_NORM = 0.1, 0.4
MARKOV_NOISE_SCALES = np.array([1, 1, 1, 3, 10])  # x, y, z, yaw, gripper
CHUNK_EPISODES = 5
RENDER_CHUNK_ROWS = 2002


def subset_name(dataset_name: str, episodes: int) -> str:
    """``cube-single-play-v0``, 100 -> ``cube-single-play-100ep-v0``: the name says it is not the full dataset."""
    if episodes == TRAINING_EPISODES:
        return dataset_name
    parts = dataset_name.split("-")
    return "-".join(parts[:-1] + [f"{episodes}ep", parts[-1]])


def check_manipulation_dataset(dataset_name: str) -> None:
    if full_dataset_name(dataset_name) not in MANIPULATION_DATASETS + VISUAL_DATASETS:
        raise ConfigError(f"{dataset_name!r} is not a manipulation dataset this script regenerates: use one of "
                          f"{', '.join(MANIPULATION_DATASETS)}, or one of them with the prefix {VISUAL_PREFIX!r}")


def oracle_kind(dataset_name: str) -> str:
    """``markov`` for the noisy datasets, ``plan`` for the play ones."""
    return "markov" if "-noisy-" in dataset_name else "plan"


def stacking_probability(env_name: str) -> float:
    """The chance that a new cube target is a stack, as OGBench's script draws it per episode."""
    if "single" in env_name:
        return 0.0
    if "double" in env_name:
        return float(np.random.uniform(0.0, 0.25))
    return 0.5


def make_oracles(env, env_name: str, oracle: str) -> dict:
    """The oracle of each task kind of ``env``: ``plan`` (play datasets) or ``markov`` (noisy ones)."""
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    if oracle == "markov":
        kwargs = {"env": env, "min_norm": MARKOV_MIN_NORM}
        if env_name.startswith("cube"):
            return {"cube": CubeMarkovOracle(**kwargs)}
        if env_name.startswith("scene"):
            return {"cube": CubeMarkovOracle(**kwargs, max_step=100), "button": ButtonMarkovOracle(**kwargs),
                    "drawer": DrawerMarkovOracle(**kwargs), "window": WindowMarkovOracle(**kwargs)}
        return {"button": ButtonMarkovOracle(**kwargs, gripper_always_closed=True)}
    kwargs = {"env": env, "noise": PLAN_NOISE, "noise_smoothing": PLAN_NOISE_SMOOTHING}
    if env_name.startswith("cube"):
        return {"cube": CubePlanOracle(**kwargs)}
    if env_name.startswith("scene"):
        return {"cube": CubePlanOracle(**kwargs), "button": ButtonPlanOracle(**kwargs),
                "drawer": DrawerPlanOracle(**kwargs), "window": WindowPlanOracle(**kwargs)}
    return {"button": ButtonPlanOracle(**kwargs, gripper_always_closed=True)}


def random_action_probability(dataset_name: str) -> float:
    if "-noisy-" not in dataset_name:
        return 0.0
    return 0.2 if dataset_name.startswith("puzzle") else 0.1


def scene_episode_is_healthy(qpos: np.ndarray) -> bool:
    """OGBench's check that the cube stays in view (or in the drawer) through a scene episode."""
    block = qpos[:, 14:17]
    too_far_right = (block[:, 1] >= 0.29).any()
    too_far_left = ((block[:, 1] <= -0.3) & ((block[:, 2] < 0.06) | (block[:, 2] > 0.08))).any()
    return not (too_far_right or too_far_left)


def episode_seed(seed: int, episode: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, episode, attempt]).generate_state(1)[0])


def generate_episode(env, oracles: dict, dataset_name: str, seed: int, episode: int) -> dict[str, np.ndarray]:
    """Episode ``episode`` of the dataset: ``EPISODE_STEPS`` transitions, remade with a new random stream
    while a scene episode is unhealthy."""
    env_name = env_id(dataset_name)
    kind = oracle_kind(dataset_name)
    p_random = random_action_probability(dataset_name)
    has_buttons = hasattr(env.unwrapped, "_cur_button_states")
    attempt = 0
    while True:
        stream = episode_seed(seed, episode, attempt)
        np.random.seed(stream % 2**32)  # the oracles and OGBench's recipe draw from numpy's global generator
        observation, info = env.reset(seed=stream % 2**31)
        env.action_space.seed(stream % 2**31)
        p_stack = stacking_probability(env_name)
        noise_scale = np.random.uniform(0, MARKOV_NOISE) if kind == "markov" else 0.0
        agent = oracles[info["privileged/target_task"]]
        agent.reset(observation, info)
        columns = {key: [] for key in ("observations", "actions", "terminals", "qpos", "qvel")}
        if has_buttons:
            columns["button_states"] = []
        done = False
        while not done:
            if np.random.rand() < p_random:
                action = env.action_space.sample()
            else:
                action = np.array(agent.select_action(observation, info))
                if kind == "markov":
                    action = action + np.random.normal(0, noise_scale * MARKOV_NOISE_SCALES, action.shape)
            action = np.clip(action, -1, 1)
            next_observation, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if agent.done:
                agent_observation, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                agent = oracles[agent_info["privileged/target_task"]]
                agent.reset(agent_observation, agent_info)
            columns["observations"].append(observation)
            columns["actions"].append(action)
            columns["terminals"].append(done)
            columns["qpos"].append(info["prev_qpos"])
            columns["qvel"].append(info["prev_qvel"])
            if has_buttons:
                columns["button_states"].append(info["prev_button_states"])
            observation = next_observation
        if not env_name.startswith("scene") or scene_episode_is_healthy(np.asarray(columns["qpos"])):
            return as_arrays(columns)
        attempt += 1


def as_arrays(columns: dict[str, list]) -> dict[str, np.ndarray]:
    """OGBench's dtypes: bool terminals, int64 button states, float32 for the rest."""
    dtypes = {"terminals": bool, "button_states": np.int64}
    return {key: np.asarray(values, dtype=dtypes.get(key, np.float32)) for key, values in columns.items()}


def make_env(dataset_name: str, **kwargs):
    """The env a dataset is made in (``data_collection`` mode, episodes of ``EPISODE_STEPS``)."""
    import gymnasium as gym
    import ogbench.manipspace  # noqa: F401  (registers the envs)

    return gym.make(env_id(dataset_name), terminate_at_goal=False, mode="data_collection",
                    max_episode_steps=EPISODE_STEPS, **kwargs)


def write_chunk(dataset_name: str, seed: int, episodes: range, path: Path) -> int:
    """Make ``episodes`` and save them to ``path`` (whole, or not at all); return the steps made."""
    env = make_env(dataset_name)
    oracles = make_oracles(env, env_id(dataset_name), oracle_kind(dataset_name))
    made = [generate_episode(env, oracles, dataset_name, seed, episode) for episode in episodes]
    env.close()
    chunk = {key: np.concatenate([episode[key] for episode in made]) for key in made[0]}
    save_whole(path, chunk, compressed=False)
    return len(chunk["terminals"])


class FrameRenderer:
    """The frames of OGBench's ``visual-`` env at the states of a saved episode. The env renders a step's
    frame right after its physics; where its ``post_step`` runs no forward pass (the cube envs), the
    bodies are drawn where they were before the last physics substep, at ``qpos - timestep * qvel``
    (MuJoCo's position update, inverted), so the frame is drawn there too. An episode's first frame
    follows a reset, which draws the state itself."""

    def __init__(self, dataset_name: str, image_size: int) -> None:
        import mujoco

        self.mujoco = mujoco
        env_name = VISUAL_PREFIX + state_dataset_name(full_dataset_name(dataset_name))
        self.env = make_env(env_name, width=image_size, height=image_size)
        self.env.reset(seed=0)
        self.env.step(np.full(self.env.action_space.shape, 0.5))  # also hides the cube targets reset leaves shown
        self.base = self.env.unwrapped
        model, data = self.base._model, self.base._data
        drawn = data.xpos.copy()
        mujoco.mj_kinematics(model, data)
        self.draws_before_last_substep = not np.array_equal(drawn, data.xpos)

    def __call__(self, state: dict[str, np.ndarray], episode_start: bool) -> np.ndarray:
        if "button_states" in state:
            self.base.set_state(state["qpos"], state["qvel"], state["button_states"])
        else:
            self.base.set_state(state["qpos"], state["qvel"])
        if self.draws_before_last_substep and not episode_start:
            model, data = self.base._model, self.base._data
            self.mujoco.mj_integratePos(model, data.qpos, data.qvel, -model.opt.timestep)
            self.mujoco.mj_kinematics(model, data)
        return self.base.compute_observation()

    def close(self) -> None:
        self.env.close()


def render_chunk(dataset_name: str, image_size: int, source: Path, rows: range, path: Path) -> int:
    """Render the frames of rows ``rows`` of the state dataset ``source`` to ``path``; return their count."""
    with np.load(source) as data:
        states = {key: data[key][rows.start:rows.stop] for key in ("qpos", "qvel", "button_states") if key in data}
        starts = np.ones(len(rows), dtype=bool)
        starts[1:] = data["terminals"][rows.start:rows.stop - 1]
        if rows.start > 0:
            starts[0] = data["terminals"][rows.start - 1]
    renderer = FrameRenderer(dataset_name, image_size)
    frames = np.stack([renderer({key: value[row] for key, value in states.items()}, starts[row])
                       for row in range(len(rows))])
    renderer.close()
    save_whole(path, {"observations": frames}, compressed=False)
    return len(rows)


def save_whole(path: Path, arrays: dict[str, np.ndarray], compressed: bool) -> None:
    """Write ``arrays`` to the npz ``path`` through a ``.tmp`` beside it: a write cut short leaves no ``path``."""
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as file:
        (np.savez_compressed if compressed else np.savez)(file, **arrays)
    partial.replace(path)


def _run_job(job: tuple) -> tuple[int, int]:
    function, count, *arguments = job
    return function(*arguments), count


def run_in_chunks(label: str, jobs: list[tuple], paths: list[Path], total: int, unit: str, workers: int | None,
                  progress: bool) -> None:
    """Run each ``(function, count, *arguments)`` of ``jobs`` whose chunk file in ``paths`` is missing, over
    ``workers`` processes (default: one per core), with a progress bar over the ``total`` ``unit`` (each
    job makes ``count`` of them; a function returns the steps or frames it made, shown as a rate)."""
    from tqdm import tqdm

    todo = [job for job, path in zip(jobs, paths) if not path.is_file()]
    done = total - sum(job[1] for job in todo)
    bar = tqdm(total=total, initial=done, desc=label, unit=unit, disable=not progress)
    if done and progress:
        bar.write(f"continuing {label}: {done} of {total} {unit} made already ({paths[0].parent})")
    made, start = 0, time.perf_counter()
    workers = min(workers or multiprocessing.cpu_count(), max(len(todo), 1))
    # Leaving the block, also on Ctrl-C, terminates the workers: a chunk cut short stays a .tmp file.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for chunk_made, count in pool.imap_unordered(_run_job, todo):
            made += chunk_made
            bar.update(count)
            bar.set_postfix(per_s=f"{made / (time.perf_counter() - start):.0f}")
    bar.close()


def dataset_paths(root: Path, name: str) -> dict[str, Path]:
    return {"train": root / f"{name}.npz", "val": root / f"{name}-val.npz"}


def generated_name(dataset_name: str, episodes: int | None) -> str:
    """The name a generation of ``episodes`` training episodes (default: the recipe's) writes."""
    return subset_name(full_dataset_name(dataset_name), episodes or TRAINING_EPISODES)


def parts_dir(root: Path, dataset_name: str, episodes: int | None) -> Path:
    """Where the chunks of a generation or a rendering live until its files are written."""
    return root / f"{generated_name(dataset_name, episodes)}.parts"


def write_manipulation_dataset(dataset_name: str, root: Path, episodes: int | None = None, seed: int = 0,
                               workers: int | None = None, progress: bool = False,
                               image_size: int = 64) -> dict[str, Path]:
    """Write ``<name>.npz`` and ``<name>-val.npz`` under ``root`` (``<name>`` tagged with the episode count
    when it is not the recipe's); return their paths. ``workers`` processes make the chunks (default: one
    per core); chunks already under ``<name>.parts/`` from a stopped run are kept. A ``visual-`` name
    renders ``image_size`` frames from its state dataset, made first where missing."""
    check_manipulation_dataset(dataset_name)
    if is_visual(dataset_name):
        return write_visual_dataset(dataset_name, root, episodes, seed, workers, progress, image_size)
    episodes = episodes or TRAINING_EPISODES
    name = generated_name(dataset_name, episodes)
    total = episodes + max(episodes // 10, 1)
    parts = parts_dir(root, dataset_name, episodes)
    parts.mkdir(parents=True, exist_ok=True)
    chunks = [range(start, min(start + CHUNK_EPISODES, total)) for start in range(0, total, CHUNK_EPISODES)]
    paths = [parts / f"seed{seed}_episodes{chunk.start:05d}-{chunk.stop - 1:05d}.npz" for chunk in chunks]
    jobs = [(write_chunk, len(chunk), full_dataset_name(dataset_name), seed, chunk, path)
            for chunk, path in zip(chunks, paths)]
    run_in_chunks(name, jobs, paths, total, "episodes", workers, progress)
    chunk_data = [dict(np.load(path)) for path in paths]
    everything = {key: np.concatenate([chunk[key] for chunk in chunk_data]) for key in chunk_data[0]}
    cut = episodes * EPISODE_STEPS  # training episodes first, then validation ones, as OGBench's script
    written = dataset_paths(root, name)
    for kind, rows in (("train", slice(0, cut)), ("val", slice(cut, None))):
        save_whole(written[kind], {key: value[rows] for key, value in everything.items()}, compressed=True)
    shutil.rmtree(parts)
    return written


def write_visual_dataset(dataset_name: str, root: Path, episodes: int | None, seed: int, workers: int | None,
                         progress: bool, image_size: int) -> dict[str, Path]:
    """The state dataset's files with every observation rendered (see ``FrameRenderer``)."""
    state_name = state_dataset_name(dataset_name)
    sources = dataset_paths(root, generated_name(state_name, episodes))
    if not all(path.is_file() for path in sources.values()):
        write_manipulation_dataset(state_name, root, episodes, seed, workers, progress)
    name = generated_name(dataset_name, episodes)
    parts = parts_dir(root, dataset_name, episodes)
    parts.mkdir(parents=True, exist_ok=True)
    jobs, paths = [], {kind: [] for kind in sources}
    for kind, source in sources.items():
        with np.load(source) as data:
            length = len(data["terminals"])
        for start in range(0, length, RENDER_CHUNK_ROWS):
            rows = range(start, min(start + RENDER_CHUNK_ROWS, length))
            paths[kind].append(parts / f"{image_size}px_{kind}_rows{rows.start:07d}-{rows.stop - 1:07d}.npz")
            jobs.append((render_chunk, len(rows), dataset_name, image_size, source, rows, paths[kind][-1]))
    every_path = paths["train"] + paths["val"]
    run_in_chunks(name, jobs, every_path, sum(job[1] for job in jobs), "frames", workers, progress)
    written = dataset_paths(root, name)
    for kind, source in sources.items():
        arrays = dict(np.load(source))
        arrays["observations"] = np.concatenate([np.load(path)["observations"] for path in paths[kind]])
        save_whole(written[kind], arrays, compressed=True)
    shutil.rmtree(parts)
    return written
