"""The run's progress: its counters and random state round-trip, the planned updates, the console lines."""
import logging

import numpy as np
import pytest
import torch

from contrastive_rl.trainers.progress import ProgressBar, RunProgress, describe_plan, planned_updates


def test_state_dict_round_trip_restores_counters_and_random_streams(make_cfg):
    progress = RunProgress.start(make_cfg("logger.eval_interval=7", "checkpoint.interval=11"))
    assert (progress.next_eval, progress.next_checkpoint, progress.collected_frames) == (7, 11, 0)
    progress.collected_frames, progress.num_updates, progress.skipped_updates = 300, 42, 2
    assert progress.credit_updates(100, 0.125) == 12 and progress.update_credit == pytest.approx(0.5)
    torch.manual_seed(3)
    np.random.seed(3)
    state = progress.state_dict()
    expected = (torch.rand(3), np.random.rand(3))

    resumed = RunProgress.start(make_cfg())
    resumed.load_state_dict(state)
    assert resumed.state_dict().keys() == state.keys()
    assert (resumed.collected_frames, resumed.num_updates, resumed.skipped_updates) == (300, 42, 2)
    assert resumed.update_credit == progress.update_credit
    torch.rand(5)  # what the collector's construction draws between loading and restoring
    resumed.restore_rng()
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


@pytest.mark.parametrize("overrides,expected", [
    ([], 491 * 125),  # the paper's run: updates start at 10k frames, 125 per 1000-frame batch
    (["collector.total_frames=400", "collector.frames_per_batch=100", "collector.init_random_frames=100",
      "optim.utd_ratio=0.05"], 20),
    (["collector.total_frames=1000", "collector.frames_per_batch=300", "collector.init_random_frames=500",
      "optim.utd_ratio=0.01"], 9),  # batches end at 300, 600, 900, 1200: the last three earn 3 each
    (["offline.dataset=x", "offline.gradient_steps=50"], 50),
    (["offline.dataset=x", "offline.gradient_steps=50", "offline.finetune=true", "collector.total_frames=400",
      "collector.frames_per_batch=100", "collector.init_random_frames=100", "optim.utd_ratio=0.05"], 70),
])
def test_planned_updates_count_as_the_training_loop_credits_them(make_cfg, overrides, expected):
    assert planned_updates(make_cfg(*overrides)) == expected


def test_plan_line_names_device_steps_and_updates(make_cfg):
    line = describe_plan(make_cfg(), torch.device("cpu"), 61375)
    assert line == ("FetchReach-v4 on cpu: 500,000 env steps and 61,375 gradient updates of batch 2048, "
                    "networks 4 x 1024")


@pytest.mark.parametrize("hidden_dim,names_quick_preset", [(1024, True), (256, False)])
def test_rate_line_after_the_first_timed_updates(make_cfg, caplog, hidden_dim, names_quick_preset):
    cfg = make_cfg(f"model.hidden_dim={hidden_dim}")
    with caplog.at_level(logging.INFO, logger="contrastive_rl.trainers.progress"):
        with ProgressBar(cfg, torch.device("cpu"), 100, total=1000, disable=False) as pbar:
            pbar.start_round(0, frames_left=500, seconds_per_frame=0.002)
            for done in range(1, 4):
                pbar.updated(done)
            assert not caplog.records  # the run's first update is not timed: two timed so far
            pbar.updated(4)
            pbar.updated(5)
    [record] = caplog.records
    message = record.getMessage()
    assert "s per update: about" in message and "(96 updates, 500 env steps)" in message
    assert ("--config-name config_quick" in message) is names_quick_preset


def test_a_long_evaluation_shows_a_bar_over_its_env_steps(make_cfg, monkeypatch):
    import types

    import tqdm

    from conftest import build_agent, check_config
    from contrastive_rl.trainers import evaluation
    from utils import make_eval_environments

    bars = []

    class RecordedBar(tqdm.tqdm):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.record = {key: kwargs[key] for key in ("desc", "total", "unit", "disable")} | {"counted": 0}
            bars.append(self.record)

        def update(self, n=1):
            self.record["counted"] += n
            return super().update(n)

    monkeypatch.setattr(evaluation, "tqdm", types.SimpleNamespace(tqdm=RecordedBar))
    cfg = make_cfg("model.hidden_dim=32", "model.num_layers=2", "logger.num_eval_episodes=3", "env.max_steps=10")
    eval_envs = make_eval_environments(cfg, check_config(cfg))
    actor, _ = build_agent(cfg, eval_envs[None])
    progress = RunProgress.start(cfg)
    evaluation.evaluate_and_record(cfg, eval_envs, None, actor, 0, progress)
    monkeypatch.setattr(evaluation, "PROGRESS_BAR_STEPS", 30)
    metrics = evaluation.evaluate_and_record(cfg, eval_envs, None, actor, 500, progress)
    # 3 episodes x 10 steps: below the default threshold no bar shows; at it, the bar counts every env step.
    assert bars == [
        {"desc": "evaluation at step 0", "total": 30, "unit": "env steps", "disable": True, "counted": 30},
        {"desc": "evaluation at step 500", "total": 30, "unit": "env steps", "disable": False, "counted": 30},
    ]
    assert 0 <= metrics["eval/success_final"] <= 1


@pytest.mark.parametrize("mode", ["minari", "ogbench-pointmaze"])
def test_dataset_generation_shows_a_bar_over_its_episodes(tmp_path, capsys, mode):
    from contrastive_rl.data.locomaze import write_locomaze_dataset
    from make_dataset import make_dataset

    if mode == "minari":
        make_dataset("PointMaze_UMaze-v3", policy="scripted", episodes=4, max_steps=10, dataset_id="pointmaze/bar-v0",
                     root=tmp_path, progress=True)
        label = "pointmaze/bar-v0"
    else:
        write_locomaze_dataset("pointmaze-medium-navigate-v0", tmp_path, episodes=4, steps=11, progress=True)
        label = "pointmaze-medium-navigate-v0 train"
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(line.startswith(f"{label}: 100%") and "4/4" in line and "episodes/s" in line for line in bar), bar


def test_the_offline_bar_counts_the_updates_themselves(make_cfg):
    cfg = make_cfg()
    with ProgressBar(cfg, torch.device("cpu"), 100, total=100, unit="updates", disable=False) as pbar:
        pbar.updated(3)
        pbar.show_updates(37, force=True)
        assert pbar.n == 37
    with ProgressBar(cfg, torch.device("cpu"), 100, total=100, unit="updates", disable=True) as hidden:
        hidden.show_updates(37, force=True)  # a data-parallel rank's hidden bar takes it too
    with ProgressBar(cfg, torch.device("cpu"), 100, total=1000, unit="frames", disable=False) as online:
        online.show_updates(37, force=True)
        assert online.n == 0  # the online bar counts frames
