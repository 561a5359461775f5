"""Videos of evaluation episodes: an env that renders each step for TorchRL's VideoRecorder, and mp4
files for the csv logger."""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import torch
from torchrl.record.loggers import CSVLogger

from contrastive_rl.envs.ogbench import is_ogbench_name, make_ogbench_env
from contrastive_rl.envs.pixels import OwnContextRender, look_down_on_maze

VIDEO_KEY = "video_frame"
FETCH_TARGET_SCALE = 2.5  # Fetch's 2 cm target sphere is a pixel or two in a video frame


def make_video_gym_env(env_name: str, max_steps: int, size: int) -> gym.Env:
    """A state-based goal env rendering ``size`` x ``size`` frames in which the desired goal shows: mazes
    seen from straight above with their red target, Fetch with its red target drawn larger (sites carry
    no physics, so the dynamics are unchanged), OGBench's envs from their own camera (the manipulation
    targets drawn as translucent objects), on one of their evaluation tasks."""
    import mujoco

    if is_ogbench_name(env_name):
        return OwnContextRender(make_ogbench_env(env_name, max_steps, render_mode="rgb_array", width=size,
                                                 height=size))
    env = gym.make(env_name, max_episode_steps=max_steps, render_mode="rgb_array", width=size, height=size)
    if env_name.startswith(("PointMaze_", "AntMaze_")):
        look_down_on_maze(env)
    elif env_name.startswith("Fetch"):
        model = env.unwrapped.model
        target = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "target0")
        model.site_size[target] *= FETCH_TARGET_SCALE
    return OwnContextRender(env)


class Mp4CSVLogger(CSVLogger):
    """TorchRL's CSVLogger, writing videos as mp4 files under ``<log dir>/<exp name>/videos``.

    TorchRL's own mp4 path needs torchcodec and the system's FFmpeg libraries; imageio-ffmpeg ships an
    ffmpeg binary in its wheel, so a pip install is enough.
    """

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kwargs) -> None:
        import imageio_ffmpeg

        frames = video.reshape(-1, *video.shape[-3:]).permute(0, 2, 3, 1).to(torch.uint8).contiguous().numpy()
        path = Path(self.experiment.log_dir) / "videos" / f"{name}_{step or 0}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        height, width = frames.shape[1:3]
        # yuv420p (what players expect) needs even sides: an odd side is stretched by one pixel.
        writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=kwargs.get("fps", 25), macro_block_size=2)
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
