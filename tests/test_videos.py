"""Videos of evaluation episodes: what they show, when they are recorded, where they land."""
import gc
import subprocess

import numpy as np
import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from conftest import TINY_OVERRIDES, build_agent, check_config, needs_rendering, script
from contrastive_rl.trainers.evaluation import record_video
from utils import make_eval_environments, make_video_environment

pytestmark = needs_rendering


class VideoSink:
    """Stands for a logger: keeps what VideoRecorder hands it."""

    def __init__(self):
        self.videos = []

    def log_video(self, name, video, step=None, **kwargs):
        self.videos.append((name, video, step, kwargs))


def read_mp4(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


@pytest.mark.parametrize(
    "overrides",
    [
        ["env.env_name=FetchReach-v4", "logger.video_size=96"],
        ["env.env_name=AntMaze_UMaze-v5", "logger.video_size=96"],
        ["env.env_name=PointMaze_UMaze-v3", "env.from_pixels=true", "env.image_size=48"],
    ],
    ids=["FetchReach", "AntMaze", "PointMaze-pixels"],
)
def test_video_replays_the_first_evaluation_episode_with_its_goal(make_cfg, overrides):
    # Envs of earlier tests that the garbage collector frees later free their MuJoCo EGL contexts then,
    # which can break a context created since (its frames come out black): collect them first.
    gc.collect()
    # One eval env: the policy then runs on batches of one in both envs, so the steps match exactly.
    cfg = make_cfg(*TINY_OVERRIDES, *overrides, "logger.video_every=1", "env.max_steps=20",
                   "logger.num_eval_episodes=1")
    env_name = check_config(cfg)
    eval_env = make_eval_environments(cfg, env_name)[None]
    sink = VideoSink()
    video_env = make_video_environment(cfg, env_name, sink)
    torch.manual_seed(0)
    actor, _ = build_agent(cfg, eval_env)
    eval_env.set_seed(123)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        first_episode = eval_env.rollout(20, actor, break_when_any_done=False)[0]
    replay = record_video(video_env, actor, max_steps=20, seed=123, step=7)

    torch.testing.assert_close(replay["observation"], first_episode["observation"])
    torch.testing.assert_close(replay["desired_goal"], first_episode["desired_goal"])
    [(name, video, step, kwargs)] = sink.videos
    assert name == "eval/video" and step == 7 and kwargs["fps"] > 0
    frames = video[0].permute(0, 2, 3, 1)  # [T, C, H, W] -> [T, H, W, C]
    assert video.dtype == torch.uint8 and frames.shape[0] == 21  # the reset frame and 20 steps
    if cfg.env.from_pixels:
        # What the agent saw, beside the goal image it was given.
        pixels = torch.cat([replay[:1]["pixels"], replay["next", "pixels"]])
        assert torch.equal(frames[:, :, :48], pixels)
        assert torch.equal(frames[:, :, 48:], replay["goal_pixels"][:1].expand(21, -1, -1, -1))
    else:
        assert frames.shape[1:] == (96, 96, 3)
        assert (frames[1:] != frames[:-1]).any(-1).flatten(1).any(-1).all()  # every step changes the picture
        red, green, blue = frames.int().unbind(-1)
        target = (red > 120) & (green < 80) & (blue < 80)
        assert target.flatten(1).sum(-1).min() >= 4  # the red goal marker is in every frame
    eval_env.close()
    video_env.close()


def run_script(tmp_path, *overrides):
    return subprocess.run(
        script(*TINY_OVERRIDES, *overrides, f"hydra.run.dir={tmp_path}"), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_csv_logger_writes_an_mp4_at_the_first_evaluation_and_every_nth_after(tmp_path):
    result = run_script(
        tmp_path, "collector.total_frames=600", "logger.video_every=2", "logger.video_size=64",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    videos = sorted(tmp_path.glob("logs/*/videos/eval/video_*.mp4"), key=lambda p: int(p.stem.split("_")[-1]))
    assert [path.stem for path in videos] == ["video_200", "video_600"]  # evaluations at 200, 400, 600
    frames = read_mp4(videos[0])
    assert frames.shape == (51, 64, 64, 3)  # reset frame and FetchReach's 50 steps
    assert frames.std() > 10  # a picture, not a blank


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_videos_reach_tensorboard_and_wandb(tmp_path, backend):
    result = run_script(
        tmp_path, "collector.total_frames=200", f"logger.backend={backend}", "logger.mode=offline",
        "logger.video_every=1", "logger.video_size=64",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if backend == "wandb":
        assert list(tmp_path.glob("logs/wandb/offline-run-*/files/media/videos/eval/video_*.mp4"))
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        [events] = tmp_path.glob("logs/*/events.out.tfevents.*")
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        [video] = accumulator.Images("eval/video")
        assert (video.step, video.width, video.height) == (200, 64, 64)
        assert "time_share/eval" in accumulator.Tags()["scalars"]  # flushed to the end
