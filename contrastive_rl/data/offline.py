"""Offline data in Minari's format: find a dataset, load it, check it against the env."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import gymnasium as gym
import torch
from hydra.utils import to_absolute_path
from tensordict import TensorDict

from contrastive_rl.errors import ConfigError
from contrastive_rl.envs.goal_envs import GOAL_KEY, GOAL_KEYS
from contrastive_rl.data.nonfinite import first_nonfinite_row
from contrastive_rl.envs.pixels import PIXELS_KEY
from contrastive_rl.data.locomaze import OGBENCH_DATASET_PREFIX, OGBENCH_ROOT, load_ogbench_transitions
from contrastive_rl.envs.ogbench import env_id, image_kwargs, is_ogbench_name, make_ogbench_env

DEFAULT_MINARI_ROOT = "~/.minari/datasets"


def minari_root(root: str | None) -> Path:
    """The directory that holds Minari datasets: ``root``, else $MINARI_DATASETS_PATH, else Minari's default."""
    return Path(root or os.environ.get("MINARI_DATASETS_PATH") or DEFAULT_MINARI_ROOT).expanduser()


def resolve_dataset(dataset: str, root: str | None = None) -> tuple[str, Path]:
    """Return ``(dataset_id, datasets root)`` for a dataset id under ``root`` or a dataset directory."""
    path = Path(dataset).expanduser()
    metadata = path / "data" / "metadata.json"
    if metadata.is_file():
        try:
            dataset_id = json.loads(metadata.read_text())["dataset_id"]
        except (ValueError, KeyError) as error:
            raise ConfigError(f"offline.dataset={dataset!r} has a malformed {metadata.name}: {error}") from None
        return dataset_id, path.resolve().parents[len(Path(dataset_id).parts) - 1]
    base = minari_root(root)
    if not (base / dataset / "data" / "metadata.json").is_file():
        raise ConfigError(
            f"offline.dataset={dataset!r} not found: no Minari dataset at {base / dataset} "
            "(give an id under offline.root or a dataset directory; make_dataset.py writes one)"
        )
    return dataset, base


@contextlib.contextmanager
def _datasets_path(root: Path):
    """Point Minari at ``root`` for the duration of a load."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def load_goal_transitions(
    dataset: str,
    root: str | None = None,
    *,
    observation_dim: int,
    goal_dim: int,
    action_dim: int,
    image_size: int | None = None,
) -> TensorDict:
    """All transitions of a Minari goal dataset as a ``[N]`` TensorDict with the keys the replay buffer
    stores, episodes one after the other, ``("next", "done")`` on the last step of each; its shapes are
    checked against the env's. With ``image_size``, the dataset must hold ``pixels`` of that size, kept
    as uint8.

    Read with Minari itself: torchrl 0.14.1's MinariExperienceReplay hands back all-zero tensors (it
    lays out its memory-mapped copy with ``memmap_like``, which drops the content).
    """
    import minari

    dataset_id, base = resolve_dataset(dataset, root)
    with _datasets_path(base):
        try:
            episodes = list(minari.load_dataset(dataset_id).iterate_episodes())
        except Exception as error:  # a broken file can fail in h5py or minari alike
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"offline.dataset={dataset!r} could not be read as a Minari dataset: {reason}") from None
    if not episodes:
        raise ConfigError(f"offline.dataset={dataset!r} holds no episodes")
    observations = episodes[0].observations
    if not isinstance(observations, dict) or not set(GOAL_KEYS) <= set(observations):
        raise ConfigError(
            f"offline.dataset={dataset!r} has no goals: its observations must be a Dict with {', '.join(GOAL_KEYS)}"
        )
    shapes = {
        "observation": (observations["observation"].shape[-1], observation_dim),
        "goal": (observations["desired_goal"].shape[-1], goal_dim),
        "action": (episodes[0].actions.shape[-1], action_dim),
    }
    for name, (found, expected) in shapes.items():
        if found != expected:
            raise ConfigError(
                f"offline.dataset={dataset!r} does not match the env: its {name} has {found} dimensions, "
                f"the env's has {expected}"
            )
    if image_size is not None:
        expected = (image_size, image_size, 3)
        found = tuple(observations["pixels"].shape[1:]) if "pixels" in observations else None
        if found != expected:
            raise ConfigError(
                f"offline.dataset={dataset!r} has no {image_size} x {image_size} images (found "
                f"{found or 'none'}): write it with make_dataset.py --from-pixels --image-size {image_size}"
            )
    data_file = base / dataset_id / "data" / "main_data.hdf5"
    for episode in episodes:
        fields = {f"observations/{key}": value for key, value in episode.observations.items()}
        for field, values in {**fields, "actions": episode.actions}.items():
            found = first_nonfinite_row(values)
            if found:
                raise ConfigError(f"offline.dataset={dataset!r} holds a non-finite value: {data_file}, episode "
                                  f"{episode.id}, field {field!r}, step {found[0]} ({found[1]})")
    return torch.cat([_episode_transitions(episode) for episode in episodes])


def load_offline_data(cfg, env_name: str) -> TensorDict:
    """``offline.dataset``'s transitions (a Minari dataset, or ``ogbench:<name>``), checked against the
    env and the batch size."""
    dataset = cfg.offline.dataset
    if dataset.startswith(OGBENCH_DATASET_PREFIX):
        name = dataset.removeprefix(OGBENCH_DATASET_PREFIX)
        if not is_ogbench_name(env_name) or env_id(name) != env_id(env_name):
            raise ConfigError(f"offline.dataset={dataset!r} is not allowed with env.env_name={env_name!r}: "
                              f"train it on its own env, env.env_name={name}")
        env = make_ogbench_env(env_name, cfg.env.max_steps, **image_kwargs(env_name, cfg.env.image_size))
        observation_key = PIXELS_KEY if env.from_pixels else "observation"
        dims = dict(observation_shape=env.observation_space[observation_key].shape,
                    action_dim=env.action_space.shape[-1])
        env.close()
        root = Path(to_absolute_path(cfg.offline.root)) if cfg.offline.root else OGBENCH_ROOT.expanduser()
        transitions = load_ogbench_transitions(name, root, **dims)
    else:
        transitions = _load_minari_data(cfg, env_name)
    usable = len(transitions) // cfg.collector.num_envs * cfg.collector.num_envs
    if cfg.buffer.batch_size > usable:
        raise ConfigError(
            f"buffer.batch_size={cfg.buffer.batch_size} is not allowed: offline.dataset="
            f"{cfg.offline.dataset!r} holds {len(transitions)} transitions"
        )
    return transitions


def _load_minari_data(cfg, env_name: str) -> TensorDict:
    env = gym.make(env_name)
    try:
        dims = dict(
            observation_dim=env.observation_space["observation"].shape[-1],
            goal_dim=env.observation_space[GOAL_KEY].shape[-1],
            action_dim=env.action_space.shape[-1],
        )
    finally:
        env.close()
    # Hydra runs in its output directory: relative paths are taken from where the command was typed.
    dataset = cfg.offline.dataset
    as_path = Path(to_absolute_path(dataset))
    if (as_path / "data" / "metadata.json").is_file():
        dataset = str(as_path)
    root = to_absolute_path(cfg.offline.root) if cfg.offline.root else None
    image_size = cfg.env.image_size if cfg.env.from_pixels else None
    return load_goal_transitions(dataset, root, image_size=image_size, **dims)


def _episode_transitions(episode) -> TensorDict:
    """Minari stores T + 1 observations and T actions per episode. Images stay uint8."""
    observations = {
        key: torch.as_tensor(value) if key == "pixels" else torch.as_tensor(value, dtype=torch.float32)
        for key, value in episode.observations.items()
        if key in (*GOAL_KEYS, "pixels")
    }
    steps = len(episode.actions)
    done = torch.zeros(steps, 1, dtype=torch.bool)
    done[-1] = True
    transitions = TensorDict(
        {
            "observation": observations["observation"][:-1],
            "desired_goal": observations["desired_goal"][:-1],
            "action": torch.as_tensor(episode.actions, dtype=torch.float32),
            "next": {
                "observation": observations["observation"][1:],
                "achieved_goal": observations["achieved_goal"][1:],
                "done": done,
            },
        },
        batch_size=[steps],
    )
    if "pixels" in observations:
        transitions["pixels"] = observations["pixels"][:-1]
        transitions["next", "pixels"] = observations["pixels"][1:]
    return transitions


def split_into_columns(transitions: TensorDict, num_columns: int) -> TensorDict:
    """``[N] -> [num_columns, N // num_columns]``: one contiguous piece per column of the replay storage,
    each piece's last step marked as an episode end so goals never cross into what the column holds next.
    The last ``N % num_columns`` transitions are dropped."""
    length = transitions.shape[0] // num_columns
    columns = transitions[: length * num_columns].reshape(num_columns, length).clone()
    columns["next", "done"][:, -1] = True
    return columns
