"""Building blocks of the Stable Contrastive RL example: goal environments, the future-goal replay
buffer, the contrastive critic and its loss."""
import os

# MuJoCo picks its GL backend when first imported: Mesa's EGL renders offscreen on a machine without a
# display, unless the user chose another backend.
os.environ.setdefault("MUJOCO_GL", "egl")
