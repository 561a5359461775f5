"""Config defaults and the checks that stop bad input before anything starts."""
import subprocess

import pytest

from conftest import ROOT, check_config, script
from contrastive_rl.config import ConfigError, validate_config

SEED_TABLE = {
    "model.embed_dim": 64,
    "model.hidden_dim": 1024,
    "model.num_layers": 4,
    "model.use_layer_norm": True,
    "model.cold_init": True,
    "buffer.batch_size": 2048,
    "loss.gamma": 0.99,
    "optim.lr": 3e-4,
}
REQUIRED_KEYS = [
    "env.env_name", "env.max_steps", "env.seed", "logger.backend", "collector.total_frames",
    "collector.frames_per_batch", "collector.init_random_frames", "collector.num_envs", "buffer.size",
    "optim.utd_ratio", "logger.eval_interval", "logger.num_eval_episodes", "device",
]


def lookup(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def test_defaults_equal_the_seed_table(make_cfg):
    cfg = make_cfg()
    for key, value in SEED_TABLE.items():
        assert lookup(cfg, key) == value, key
    for key in REQUIRED_KEYS:
        lookup(cfg, key)
    assert cfg.logger.backend in ("wandb", "tensorboard", "csv", "")


def test_every_config_key_is_in_the_readme(make_cfg):
    readme = (ROOT / "README.md").read_text()
    cfg = make_cfg()
    keys = [f"{group}.{key}" for group, node in cfg.items() if hasattr(node, "items") for key in node]
    missing = [key for key in keys if f"`{key}`" not in readme]
    assert not missing


def test_valid_config_resolves_env(make_cfg):
    assert check_config(make_cfg()) == "FetchReach-v4"
    assert check_config(make_cfg("env.env_name=PointMaze_UMaze-v3")) == "PointMaze_UMaze-v3"


def test_missing_version_resolves_to_newest(make_cfg, caplog):
    with caplog.at_level("WARNING"):
        assert check_config(make_cfg("env.env_name=FetchReach-v3")) == "FetchReach-v4"
    assert "FetchReach-v3 is not registered; using FetchReach-v4" in caplog.text


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("env.env_name=NoSuchEnv-v0", "env.env_name='NoSuchEnv-v0' is not a registered"),
        ("env.env_name=Pendulum-v1", "env.env_name='Pendulum-v1' has no goals"),
        ("buffer.batch_size=4096", "buffer.batch_size=4096 .* <= buffer.size=4000"),
        ("model.hidden_dim=0", "model.hidden_dim=0 .* positive"),
        ("model.num_layers=-1", "model.num_layers=-1 .* positive"),
        ("model.embed_dim=0", "model.embed_dim=0 .* positive"),
        ("collector.total_frames=0", "collector.total_frames=0 .* positive"),
        ("collector.num_envs=4", "collector.frames_per_batch=999 .* multiple of collector.num_envs=4"),
        ("logger.eval_interval=0", "logger.eval_interval=0 .* positive"),
        ("loss.gamma=1.0", r"loss.gamma=1.0 .* \(0, 1\)"),
        ("logger.backend=mlflow", "logger.backend='mlflow' .* wandb, tensorboard, csv"),
        ("optim.utd_ratio=-0.5", "optim.utd_ratio=-0.5 .* positive"),
        ("buffer.size=10", r"buffer.size=10 .*\(collector.frames_per_batch=999\)"),
        ("loss.contrastive=cpc", "loss.contrastive='cpc' .* infonce, symmetric_infonce, binary_nce, td"),
        ("loss.energy=cos", "loss.energy='cos' .* dot, cosine, l2"),
        ("model.policy=beta", "model.policy='beta' .* tanh_normal, fixed_std_normal"),
        ("loss.bc_coef=1.5", r"loss.bc_coef=1.5 .* \[0, 1\]"),
        ("loss.temperature=0", "loss.temperature=0 .* positive"),
        ("compile.compile_mode=fastest", "compile.compile_mode='fastest' .* reduce-overhead"),
        ("logger.video_every=-1", "logger.video_every=-1 .* integer >= 0"),
        ("logger.video_size=0", "logger.video_size=0 .* positive"),
    ],
)
def test_bad_input_is_named(make_cfg, override, pattern):
    base = ["buffer.size=4000", "collector.frames_per_batch=999"]
    overrides = [o for o in base if o.split("=")[0] != override.split("=")[0]] + [override]
    with pytest.raises(ConfigError, match=pattern):
        check_config(make_cfg(*overrides))


def test_videos_need_a_logger(make_cfg):
    with pytest.raises(ConfigError, match="logger.video_every=2 is not allowed with no logger.backend"):
        check_config(make_cfg("logger.video_every=2", "logger.backend="))


@pytest.mark.slow
def test_script_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        script("buffer.batch_size=0", f"hydra.run.dir={tmp_path}"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: buffer.batch_size=0 is not allowed: it must be a positive number"]


@pytest.mark.parametrize(
    "config_name,expected",
    [
        ("config_stable_crl", {"loss.contrastive": "td", "model.embed_dim": 16, "model.twin_critics": True,
                               "model.policy": "fixed_std_normal", "loss.bc_coef": 0.05,
                               "model.hidden_dim": 1024, "buffer.batch_size": 2048}),
        ("config_crl", {"loss.contrastive": "binary_nce", "model.hidden_dim": 256, "model.num_layers": 2,
                        "model.use_layer_norm": False, "model.cold_init": False, "buffer.batch_size": 256,
                        "loss.random_goal_fraction": 0.5}),
        ("config_quick", {"model.hidden_dim": 256, "buffer.batch_size": 256, "loss.auto_alpha": True}),
        ("config_pixels", {"env.from_pixels": True, "env.image_size": 48, "model.hidden_dim": 256,
                           "model.cold_init": False, "loss.logsumexp_coef": 0.1}),
    ],
)
def test_presets_compose_and_validate(config_name, expected):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name=config_name)
    for key, value in expected.items():
        assert lookup(cfg, key) == value, key
    assert validate_config(cfg) is None
    assert check_config(cfg) == cfg.env.env_name


def test_cudagraphs_need_a_gpu(make_cfg):
    with pytest.raises(ConfigError, match="compile.cudagraphs=true is not allowed on device 'cpu'"):
        check_config(make_cfg("compile.cudagraphs=true", "device=cpu"))
