"""benchmarks/ogbench.py keeps each finished run and trains only what it does not have."""
import argparse

import pytest

from benchmarks import ogbench


def benchmark_args(tmp_path, **changes):
    args = dict(scale="cpu", steps=100, eval_interval=50, eval_episodes=2, overrides=[], runs=tmp_path / "runs")
    args.update(changes)
    return argparse.Namespace(**args)


def test_a_kept_run_is_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    trained = []

    def fake_train(recipe, name, seed, args, run_dir, threads):
        trained.append((recipe, name, seed, args.steps))
        return {"overall": {50: 0.2, 100: 0.4 + seed}, "updates_per_second": 10.0}

    monkeypatch.setattr(ogbench, "train", fake_train)
    args = benchmark_args(tmp_path)
    first = ogbench.kept_run("ogbench_crl", "pointmaze-medium-navigate-v0", 0, args, 1, tmp_path)
    again = ogbench.kept_run("ogbench_crl", "pointmaze-medium-navigate-v0", 0, args, 1, tmp_path)
    assert again == first == {"overall": {50: 0.2, 100: 0.4}, "updates_per_second": 10.0}
    assert trained == [("ogbench_crl", "pointmaze-medium-navigate-v0", 0, 100)]

    ogbench.kept_run("ogbench_crl", "pointmaze-medium-navigate-v0", 1, args, 1, tmp_path)
    longer = benchmark_args(tmp_path, steps=200)
    ogbench.kept_run("ogbench_crl", "pointmaze-medium-navigate-v0", 0, longer, 1, tmp_path)
    assert trained[1:] == [("ogbench_crl", "pointmaze-medium-navigate-v0", 1, 100),
                           ("ogbench_crl", "pointmaze-medium-navigate-v0", 0, 200)]
    assert sorted(path.name for path in args.runs.iterdir()) == [
        "ogbench_crl_pointmaze-medium-navigate-v0_seed0.json", "ogbench_crl_pointmaze-medium-navigate-v0_seed1.json"]


def test_the_matrix_runs_seed_by_seed(tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(ogbench, "kept_run", lambda recipe, name, seed, *rest: order.append((seed, recipe, name)) or {})
    args = benchmark_args(tmp_path, recipes=["ogbench_crl", "ogbench_tmd"], datasets=["a", "b"], seeds=[0, 1],
                          parallel=1)
    ogbench.run_all(args)
    assert [seed for seed, _, _ in order] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert order[:4] == [(0, "ogbench_crl", "a"), (0, "ogbench_crl", "b"),
                         (0, "ogbench_tmd", "a"), (0, "ogbench_tmd", "b")]


def test_manipulation_datasets_take_their_recipes_and_a_missing_pixel_recipe_is_refused():
    assert ogbench.recipe_config("ogbench_crl", "pointmaze-medium-navigate-v0") == "config_ogbench_crl"
    assert ogbench.recipe_config("ogbench_crl", "scene-play-v0") == "config_ogbench_crl_manipulation"
    assert ogbench.recipe_config("stable_crl", "cube-single-play-v0") == "config_stable_crl"
    assert ogbench.recipe_config("ogbench_crl", "visual-cube-single-play-10ep-v0") == "config_ogbench_crl_visual"
    with pytest.raises(SystemExit, match="--recipes ogbench_tmd has no pixel version: use ogbench_crl"):
        ogbench.recipe_config("ogbench_tmd", "visual-cube-single-play-v0")
