"""Docs that cannot go stale: every training command in the README and in docs/ composes with Hydra and
passes the project's config checks, and the configuration reference documents exactly config.yaml's keys
with their defaults."""
import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import ROOT, check_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = "stable_contrastive_rl.py"
# Where a command ends inside a line of shell: a separator, a redirection, a comment or a closing quote.
COMMAND_END = re.compile(r"\s(?:&&|\|\||;|\||>|2>|#)|['`]")


def code_texts(text: str):
    """The fenced blocks (continuation lines joined) and the inline code spans of a Markdown page, with
    the line each starts on."""
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.finditer(text):
        line = text.count("\n", 0, block.start()) + 2
        yield line, block.group(1).replace("\\\n", " ")
    prose = fenced.sub(lambda block: "\n" * block.group(0).count("\n"), text)
    for span in re.finditer(r"`([^`]+)`", prose):
        yield prose.count("\n", 0, span.start()) + 1, span.group(1).replace("\n", " ")


def training_commands(path: Path):
    """``(where, words, world_size)`` of each command of ``path`` that runs the training script, with
    ``python`` or ``torchrun``; ``words`` are the script's arguments."""
    for line, code in code_texts(path.read_text()):
        for command_line in code.splitlines():
            if command_line.lstrip().startswith("#"):
                continue
            for found in re.finditer(rf"(?:python|torchrun)\b[^\n]*?\b{re.escape(SCRIPT)}", command_line):
                launcher = found.group(0)
                if not (launcher.startswith("python " + SCRIPT) or launcher.startswith("torchrun")):
                    continue
                rest = command_line[found.end():]
                end = COMMAND_END.search(rest)
                words = shlex.split(rest[: end.start()] if end else rest)
                yield f"{path.relative_to(ROOT)}:{line}", words, world_size(launcher)


def world_size(launcher: str) -> int:
    """The processes a torchrun launch starts (nodes x processes per node); 1 for python."""
    counts = {name: int(value) for name, value in re.findall(r"--(nnodes|nproc_per_node)[= ](\d+)", launcher)}
    return counts.get("nnodes", 1) * counts.get("nproc_per_node", 1) if launcher.startswith("torchrun") else 1


COMMANDS = [command for path in DOCS for command in training_commands(path)]


def test_the_docs_hold_the_commands_they_show():
    where = {command[0].split(":")[0] for command in COMMANDS}
    assert {"README.md", "docs/running.md", "docs/ogbench.md", "docs/checkpoints.md", "docs/scaling.md"} <= where
    assert len(COMMANDS) >= 20


def run_configs(words: list[str]):
    """The config name and each set of overrides a command runs: a multirun (``-m``) sweeps the product
    of its comma-separated values. Hydra's own settings (``hydra.*``, ``hydra/...``) are left out."""
    config_name, overrides, multirun, index = "config", [], False, 0
    while index < len(words):
        word = words[index]
        if word in ("--config-name", "-cn"):
            config_name, index = words[index + 1], index + 2
            continue
        if word.startswith("--config-name="):
            config_name = word.split("=", 1)[1]
        elif word in ("-m", "--multirun"):
            multirun = True
        elif not word.startswith("hydra"):
            overrides.append(word)
        index += 1
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return config_name, [overrides]
    choices = [[f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
               if override.is_sweep_override() else [override.input_line] for override in parsed]
    return config_name, [list(combination) for combination in itertools.product(*choices)]


@pytest.mark.parametrize("where,words,world_size", COMMANDS, ids=[command[0] for command in COMMANDS])
def test_a_documented_command_composes_and_passes_the_config_checks(where, words, world_size):
    config_name, runs = run_configs(words)
    assert (ROOT / f"{config_name}.yaml").is_file(), f"{where}: --config-name {config_name} does not exist"
    for overrides in runs:
        with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
            cfg = compose(config_name=config_name, overrides=overrides)
        check_config(cfg, world_size)


def documented_keys() -> dict[str, str]:
    """The configuration reference's table: ``{key: default as written}``."""
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| (.*?) \| .* \|$", (ROOT / "docs" / "configuration.md").read_text(), re.M)
    return dict(rows)


def as_value(written: str):
    """A default as the table writes it (``500000``, ``3e-4``, ``""``, `` `${env.env_name}` ``), as YAML reads it."""
    written = written.strip("`")
    if written == '""':
        return ""
    for kind in (int, float):
        try:
            return kind(written)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(written, written)


def flat_defaults() -> dict:
    def flatten(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(OmegaConf.to_container(OmegaConf.load(ROOT / "config.yaml"), resolve=False)))


def test_the_configuration_reference_documents_every_key_of_config_yaml_with_its_default():
    documented, defaults = documented_keys(), flat_defaults()
    assert sorted(set(defaults) - set(documented)) == [], "keys of config.yaml the reference does not document"
    assert sorted(set(documented) - set(defaults)) == [], "keys the reference documents that config.yaml lacks"
    wrong = {key: (written, defaults[key]) for key, written in documented.items() if as_value(written) != defaults[key]}
    assert wrong == {}, "defaults the reference gives differently from config.yaml: {key: (reference, config.yaml)}"
