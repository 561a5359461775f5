"""Hydra multirun with the joblib launcher, and gathering a sweep's curves."""
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_OVERRIDES, script
from gather_sweep import read_runs


def write_run(sweep, job, overrides, success):
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    scalars = run / "logs" / "exp" / "scalars" / "eval"
    scalars.mkdir(parents=True)
    (scalars / "success_final.csv").write_text("".join(f"{step},{value}\n" for step, value in success))


def test_gather_groups_seeds_and_averages(tmp_path):
    write_run(tmp_path, 0, ["env.seed=0", "loss.gamma=0.9"], [(100, 0.0), (200, 0.5)])
    write_run(tmp_path, 1, ["env.seed=1", "loss.gamma=0.9"], [(100, 1.0), (200, 1.0)])
    write_run(tmp_path, 2, ["env.seed=0", "loss.gamma=0.99"], [(100, 0.25), (200, 0.75)])
    groups = read_runs(tmp_path, "eval/success_final")
    assert sorted(groups) == ["loss.gamma=0.9", "loss.gamma=0.99"]
    assert groups["loss.gamma=0.9"] == [{100: 0.0, 200: 0.5}, {100: 1.0, 200: 1.0}]
    result = subprocess.run(
        [sys.executable, str(ROOT / "gather_sweep.py"), str(tmp_path), "--output", str(tmp_path / "plot.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "100 0.50 +- 0.50" in result.stdout and "200 0.75 +- 0.25" in result.stdout
    assert (tmp_path / "plot.png").stat().st_size > 0


@pytest.mark.slow
def test_joblib_multirun_gives_one_directory_per_run(tmp_path):
    result = subprocess.run(
        script("-m", "env.seed=0,1", *TINY_OVERRIDES, "collector.total_frames=200", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    groups = read_runs(tmp_path, "eval/success_final")
    assert [len(curves) for curves in groups.values()] == [2]
    seeds = sorted((run / ".hydra" / "overrides.yaml").read_text().splitlines()[0] for run in tmp_path.glob("[0-9]"))
    assert seeds == ["- env.seed=0", "- env.seed=1"]


def test_gather_says_when_there_is_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "gather_sweep.py"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: no run with eval/success_final under {tmp_path} (was logger.backend=csv?)"
