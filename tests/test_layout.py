"""The package's floor plan: drawn as arrows between files, its imports form no circle, and no arrow runs
from a lower room up to a higher one; the modules of earlier versions fail with a line naming their place."""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "contrastive_rl"
# Lowest first: a module imports from its own room or from rooms below it.
ROOMS = ("errors", "modules", "envs", "data", "objectives", "trainers")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def room(module: str) -> str:
    return module.split(".")[1]


def import_arrows() -> dict[str, set[str]]:
    """Every package module and the package modules it imports, at the top or inside a function."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    arrows = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("contrastive_rl."):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("contrastive_rl."))
        arrows[name] = {target for target in targets if target in modules and target != name}
    return arrows


def test_every_module_is_in_a_room():
    assert {room(module) for module in import_arrows()} <= set(ROOMS)


def test_no_import_runs_up_to_a_higher_room():
    upward = [f"{source} -> {target}" for source, targets in import_arrows().items() for target in targets
              if ROOMS.index(room(target)) > ROOMS.index(room(source))]
    assert not upward


def test_the_imports_form_no_circle():
    arrows, done, path = import_arrows(), set(), []

    def visit(module):
        if module in path:
            raise AssertionError("circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(arrows[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(arrows):
        visit(module)


@pytest.mark.parametrize("old, where", [("loss", "contrastive_rl.objectives"),
                                        ("config", "contrastive_rl.trainers.config")])
def test_a_module_of_an_earlier_version_names_its_new_place(old, where):
    with pytest.raises(ModuleNotFoundError, match=f"contrastive_rl.{old} has moved: import from {where}"):
        importlib.import_module(f"contrastive_rl.{old}")


OLD_RUN = Path(__file__).resolve().parent / "data" / "flat_layout_run"
# The command that wrote OLD_RUN (a checkpoint at 400 env steps), with the code of the flat layout.
OLD_RUN_OVERRIDES = [
    "collector.frames_per_batch=100", "collector.init_random_frames=100", "buffer.size=1000", "buffer.batch_size=32",
    "model.hidden_dim=32", "model.num_layers=2", "model.embed_dim=8", "optim.utd_ratio=0.05", "logger.backend=csv",
    "logger.eval_interval=200", "logger.num_eval_episodes=2",
]


@pytest.mark.slow
def test_a_checkpoint_of_the_flat_layout_resumes(tmp_path):
    import shutil
    import subprocess

    from conftest import read_scalar, script

    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    resumed = subprocess.run(script(*OLD_RUN_OVERRIDES, "collector.total_frames=600", "checkpoint.resume=auto",
                                    f"hydra.run.dir={run_dir}"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [step for step, _ in read_scalar(run_dir, "train/collected_frames")] == [500, 600]
