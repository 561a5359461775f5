"""Config defaults and the checks that stop bad input before anything starts."""
import subprocess

import pytest

from conftest import ROOT, TINY_OVERRIDES, check_config, read_scalar, script
from contrastive_rl.errors import ConfigError
from contrastive_rl.trainers.config import validate_config

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
        ("loss.energy=cos", "loss.energy='cos' .* dot, scaled_dot, cosine, l2"),
        ("model.policy=beta", "model.policy='beta' .* tanh_normal, fixed_std_normal"),
        ("loss.bc_coef=1.5", r"loss.bc_coef=1.5 .* \[0, 1\]"),
        ("loss.bc_coef=-1", r"loss.bc_coef=-1 .* >= 0"),
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


def config_yaml_keys() -> dict:
    """Every key of config.yaml with its default, read from the file itself."""
    from omegaconf import OmegaConf

    from contrastive_rl.trainers.config import flat_items

    return flat_items(OmegaConf.load(ROOT / "config.yaml"))


# String keys that take any text: only a value of another type is wrong for them.
FREE_TEXT = {"env.env_name", "logger.project_name", "logger.exp_name", "offline.dataset", "offline.root",
             "checkpoint.resume"}


def wrong_values(key: str, default) -> list:
    """Values of the wrong type, or out of range, for a key whose default is ``default``."""
    if isinstance(default, bool):
        return ["maybe", 2]
    if isinstance(default, int):
        return ["abc", 1.5, -1]
    if isinstance(default, float):
        return ["abc", -1.0, True]
    if key == "loss.target_entropy":  # a number or auto
        return ["high", True]
    return [5] if key in FREE_TEXT else [5, "no_such_value"]


BAD_INPUTS = [(key, value) for key, default in config_yaml_keys().items() for value in wrong_values(key, default)]


@pytest.mark.parametrize("key,value", BAD_INPUTS, ids=[f"{key}={value}" for key, value in BAD_INPUTS])
def test_every_key_of_config_yaml_refuses_a_wrong_value(make_cfg, key, value):
    """Driven by config.yaml: a key added there without a check fails here."""
    with pytest.raises(ConfigError) as error:
        check_config(make_cfg(f"{key}={value}"))
    message = str(error.value)
    assert message.startswith(f"{key}=") and " is not allowed" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("override,pattern", [
    ("+model.depth=3", r"^model.depth=3 is not allowed: config.yaml has no such key$"),
    ("+extra=1", r"^extra=1 is not allowed: config.yaml has no such key$"),
    ("device=cuda:3", r"^device='cuda:3' is not allowed: this machine has "),
    ("device=tpu", r"^device='tpu' is not allowed: "),
    ("device=mps", r"^device='mps' is not allowed: this machine has no mps device"),
    ("env.seed=4294967296", r"^env.seed=4294967296 is not allowed: it must lie in \[0, 4294967295\]$"),
    ("env.seed=-3", r"^env.seed=-3 is not allowed: it must lie in \[0, 4294967295\]$"),
    ("loss.target_entropy=high", r"^loss.target_entropy='high' is not allowed: use a number or auto"),
    ("logger.mode=cloud", r"^logger.mode='cloud' is not allowed: use one of offline, online, disabled$"),
])
def test_unknown_keys_missing_devices_and_seeds_the_envs_cannot_take_are_named(make_cfg, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_config(make_cfg(override))


@pytest.mark.parametrize("override", ["env.seed=4294967295", "loss.target_entropy=-2.5", "loss.target_entropy=auto",
                                      "logger.backend=null", "compile.compile_mode=null", "device=cpu",
                                      "env.image_size=16", "loss.logsumexp_coef=0"])
def test_edge_values_that_work_pass(make_cfg, override):
    check_config(make_cfg(override))


@pytest.mark.slow
def test_edge_configurations_run_to_the_end(tmp_path):
    """A run shorter than its random frames (no update at all), with a key irrelevant to it (an image
    size below the encoder's minimum, in a state-based run)."""
    result = subprocess.run(
        script(*TINY_OVERRIDES, "collector.total_frames=200", "collector.init_random_frames=1000",
               "env.image_size=16", f"hydra.run.dir={tmp_path}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_scalar(tmp_path, "train/num_updates")[-1][1] == 0
    assert [step for step, _ in read_scalar(tmp_path, "eval/success_final")] == [200]
