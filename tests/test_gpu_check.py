"""The GPU check's kit, tried whole on this machine: prepared from the registries for this Python, installed
with --no-index into a scratch folder beside a bare torch, and the check's CPU fallback run with it."""
import os
import re
import socket
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def registry_answers() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not registry_answers(), reason="no package registry answers: the kit cannot be prepared here")
def test_the_kit_installs_and_the_check_reports_every_figure(tmp_path):
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    kit = tmp_path / "kit"
    here = {**os.environ, "GPU_KIT": str(kit), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    prepared = subprocess.run(["bash", "benchmarks/gpu_check.sh", "prepare", version], cwd=ROOT, env=here,
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    size = int(re.search(r"(\d+) MiB", prepared.stdout).group(1))
    assert size < 60

    # The GPU machine's stand-in: a bare Python with torch and numpy, nothing else.
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=True)
    subprocess.run([bare / "bin" / "python", "-m", "pip", "install", "--quiet", "torch==2.13.0", "numpy"], check=True)
    there = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    there.update(GPU_KIT=str(kit), OUT=str(tmp_path / "out"), PATH=f"{bare / 'bin'}:{os.environ['PATH']}")
    subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=there, capture_output=True, check=True)
    report = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert "wheels installed from" in report and "no CUDA device: CPU fallback" in report
    assert "failed" not in report, report
    assert re.search(r"eager\s+[\d.]+ ms/update\s+[\d.]+ updates/s", report), report
    assert re.search(r"auto\s+[\d.]+ ms/update\s+[\d.]+ updates/s", report), report
    assert re.search(r"offline updates/s \(whole run, compilation included\): [\d.]+", report), report
    assert re.search(r"online frames/s: [\d.]+, updates/s: [\d.]+", report), report
