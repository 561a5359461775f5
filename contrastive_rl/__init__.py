"""Building blocks of the Stable Contrastive RL example, in rooms named as TorchRL names its own:
``envs`` (goal environments), ``data`` (replay and datasets), ``modules`` (networks), ``objectives``
(the losses) and ``trainers`` (the run's machinery); ``errors`` below them all."""
import importlib.abc
import os
import sys

# MuJoCo picks its GL backend when first imported: Mesa's EGL renders offscreen on a machine without a
# display, unless the user chose another backend.
os.environ.setdefault("MUJOCO_GL", "egl")

# The flat modules of earlier versions, and where their names went.
MOVED = {
    "loss": "contrastive_rl.objectives (ContrastiveLoss: objectives.contrastive; make_contrastive_loss: objectives.family)", "models": "contrastive_rl.modules.models",
    "envs": "contrastive_rl.envs.goal_envs", "pixels": "contrastive_rl.envs.pixels (image encoders: "
    "contrastive_rl.modules.encoders; RandomShiftCrop: contrastive_rl.data.augmentation)",
    "videos": "contrastive_rl.envs.videos", "scripted": "contrastive_rl.envs.scripted",
    "replay": "contrastive_rl.data.replay", "offline": "contrastive_rl.data.offline",
    "locomaze": "contrastive_rl.data.locomaze (OGBench's envs and names: contrastive_rl.envs.ogbench)",
    "manipspace": "contrastive_rl.data.manipspace (dataset names: contrastive_rl.envs.ogbench)",
    "nonfinite": "contrastive_rl.data.nonfinite (NonFiniteError: contrastive_rl.errors)",
    "config": "contrastive_rl.trainers.config (ConfigError: contrastive_rl.errors)",
    **{name: f"contrastive_rl.trainers.{name}" for name in (
        "update", "checkpoint", "progress", "stopping", "evaluation", "distributed", "runtime", "value_maps")},
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """``import contrastive_rl.loss`` and the like fail with one line that says where the module went."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix == "contrastive_rl" and name in MOVED:
            raise ModuleNotFoundError(f"{fullname} has moved: import from {MOVED[name]}", name=fullname)
        return None


sys.meta_path.append(_MovedModuleFinder())
