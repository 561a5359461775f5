"""Learning from pixels: rendered observations and goal images, the shared CNN encoder, random-crop
augmentation."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs.transforms import Transform

PIXELS_KEY = "pixels"
GOAL_PIXELS_KEY = "goal_pixels"
IMAGE_GOAL_ENVS = ("PointMaze_",)


def supports_image_goals(env_name: str) -> bool:
    return env_name.startswith(IMAGE_GOAL_ENVS)


def mujoco_renderer(env: gym.Env):
    """The gymnasium MuJoCo renderer of a goal env (the mazes keep it on their inner point or ant env);
    None for an env with its own renderer (OGBench's manipulation envs)."""
    base = env.unwrapped
    return getattr(getattr(base, "point_env", None) or getattr(base, "ant_env", None) or base, "mujoco_renderer", None)


class OwnContextRender(gym.Wrapper):
    """Make the env's own GL context current before each render.

    gymnasium's MuJoCo renderer assumes its context stays current; with several envs rendering in one
    process (train, eval and video envs) each frame would otherwise be drawn in whichever context was
    made current last: black, or another env's scene.
    """

    def render(self):
        renderer = mujoco_renderer(self.env)
        viewer = renderer.viewer if renderer is not None else None
        if viewer is not None:  # the first render creates the context and makes it current
            viewer.make_context_current()
        return self.env.render()


def look_down_on_maze(env: gym.Env) -> None:
    """Point the camera of a PointMaze or AntMaze env straight down on the whole maze (the defaults are
    an oblique far view, and a close view that follows the ant)."""
    maze = env.unwrapped
    extent = max(maze.maze.map_length, maze.maze.map_width) * maze.maze.maze_size_scaling
    mujoco_renderer(env).default_cam_config = {
        "distance": float(extent),
        "elevation": -90.0,
        "azimuth": 90.0,
        "lookat": np.zeros(3),
    }


class GoalImageWrapper(gym.Wrapper):
    """Add the rendered frame (``pixels``) and an image of the desired goal (``goal_pixels``) to a
    PointMaze observation.

    The camera looks straight down on the whole maze (the default view leaves the ball a pixel or two
    wide). The goal image is rendered once per episode with the ball placed at the
    desired goal; the red target marker is hidden from every image, so the goal is known from
    ``goal_pixels`` alone. No library renders goal images, hence this wrapper.
    """

    def __init__(self, env: gym.Env, image_size: int) -> None:
        super().__init__(env)
        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(
            {**env.observation_space.spaces, PIXELS_KEY: image, GOAL_PIXELS_KEY: image}
        )
        maze = env.unwrapped
        self._point = maze.point_env
        self._point.model.site_rgba[maze.target_site_id, 3] = 0.0
        look_down_on_maze(env)
        self._goal_pixels = None

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._goal_pixels = self._render_at(observation["desired_goal"])
        return self._add_pixels(observation), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._add_pixels(observation), reward, terminated, truncated, info

    def _add_pixels(self, observation: dict) -> dict:
        return {**observation, PIXELS_KEY: self.env.render(), GOAL_PIXELS_KEY: self._goal_pixels}

    def _render_at(self, position: np.ndarray) -> np.ndarray:
        import mujoco

        model, data = self._point.model, self._point.data
        qpos, qvel = data.qpos.copy(), data.qvel.copy()
        data.qpos[:2] = position
        data.qvel[:] = 0.0
        mujoco.mj_forward(model, data)
        image = self.env.render()
        data.qpos[:], data.qvel[:] = qpos, qvel
        mujoco.mj_forward(model, data)
        return image


def rendering_error(env_name: str) -> str:
    """Empty if ``env_name`` renders offscreen here, else why not."""
    try:
        env = gym.make(env_name, render_mode="rgb_array", width=8, height=8)
        try:
            env.reset(seed=0)
            env.render()
        finally:
            env.close()
    except Exception as error:  # no GL library, no EGL device, ...
        return f"{type(error).__name__}: {error}"
    return ""


def make_pixel_gym_env(env_name: str, max_steps: int, image_size: int) -> gym.Env:
    env = gym.make(
        env_name, max_episode_steps=max_steps, render_mode="rgb_array", width=image_size, height=image_size
    )
    return GoalImageWrapper(OwnContextRender(env), image_size)


def encode_images(net, pixels: torch.Tensor, out_features: int) -> torch.Tensor:
    """``net`` over uint8 images ``[..., H, W, 3]``, scaled to [0, 1] and made channels-first on their
    device, as ``[..., out_features]``."""
    batch_shape = pixels.shape[:-3]
    images = pixels.reshape(-1, *pixels.shape[-3:]).permute(0, 3, 1, 2).float().div(255.0)
    return net(images).reshape(*batch_shape, out_features)


class PixelEncoder(nn.Module):
    """The paper's shallow CNN: 3 conv layers (32, 64, 64 channels; kernels 8, 4, 3; strides 4, 2, 1),
    each followed by a LayerNorm over (channels, height, width) and a ReLU, then flattened.

    Takes uint8 images ``[..., H, W, 3]`` and scales them to [0, 1] on their device.
    """

    def __init__(self, image_size: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        layers = []
        channels, size = 3, image_size
        for out_channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            size = (size - kernel) // stride + 1
            if size < 1:
                raise ValueError(f"images of {image_size} pixels are too small for the encoder (at least 36)")
            layers += [
                nn.Conv2d(channels, out_channels, kernel, stride, device=device),
                nn.LayerNorm([out_channels, size, size], device=device),
                nn.ReLU(),
            ]
            channels = out_channels
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = channels * size * size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(self.net, pixels, self.out_features)


class ImpalaSmallEncoder(nn.Module):
    """OGBench's ``impala_small`` image encoder (``impls/utils/encoders.py``: its IMPALA ResNet with one
    residual block per stack): three stacks of 16, 32, 32 channels, each a 3 x 3 conv, a 3 x 3 max-pool of
    stride 2 and a residual block of two ReLU-conv pairs; then ReLU, flatten, Linear to 512 and ReLU.

    Takes uint8 images ``[..., H, W, 3]`` and scales them to [0, 1] on their device.
    """

    def __init__(self, image_size: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        stacks, channels, size = [], 3, image_size
        for out_channels in (16, 32, 32):
            stacks.append(ImpalaStack(channels, out_channels, device=device))
            channels, size = out_channels, (size + 1) // 2
        self.stacks = nn.Sequential(*stacks, nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels * size * size, 512, device=device), nn.ReLU())
        self.out_features = 512
        for module in self.modules():  # flax's xavier_uniform kernels and zero biases, as OGBench's encoder
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(lambda images: self.head(self.stacks(images)), pixels, self.out_features)


class ImpalaStack(nn.Module):
    """conv 3 x 3, max-pool 3 x 3 / 2 ('SAME' padding), then x + conv(relu(conv(relu(x))))."""

    def __init__(self, in_channels: int, channels: int, device=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1, device=device)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, device=device),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))
        return x + self.block(x)


ENCODERS = {"cnn": PixelEncoder, "impala_small": ImpalaSmallEncoder}


class SharedEncoderView(nn.Module):
    """The critic's encoder seen from the actor: same weights, output detached, so the actor loss never
    trains the encoder and the encoder's parameters stay the critic's alone."""

    def __init__(self, encoder: PixelEncoder) -> None:
        super().__init__()
        self.__dict__["encoder"] = encoder  # not a submodule: its parameters belong to the critic
        self.out_features = encoder.out_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).detach()


class RandomShiftCrop(Transform):
    """Random-crop augmentation of the paper: pad by ``pad`` pixels (replicating the border) and crop
    back to size at a random offset, the SAME offset for every key of a sample (an observation and its
    goal), a fresh offset per sample, applied to each sample with probability ``prob``.

    Works on uint8 ``[B, H, W, C]`` images on any device, without a per-sample loop: replicate padding
    is done by clamping the gathered row and column indices.
    """

    def __init__(self, in_keys, pad: int = 4, prob: float = 0.5) -> None:
        super().__init__(in_keys=in_keys, out_keys=in_keys)
        self.pad = pad
        self.prob = prob

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = [key for key in self.in_keys if key in tensordict.keys(include_nested=True)]
        first = tensordict.get(keys[0])
        batch, height, width = first.shape[0], first.shape[-3], first.shape[-2]
        device = first.device
        shift = torch.randint(-self.pad, self.pad + 1, (batch, 2), device=device)
        shift = shift * (torch.rand(batch, 1, device=device) < self.prob)
        rows = (torch.arange(height, device=device) + shift[:, :1]).clamp(0, height - 1)
        cols = (torch.arange(width, device=device) + shift[:, 1:]).clamp(0, width - 1)
        samples = torch.arange(batch, device=device)[:, None, None]
        for key in keys:
            tensordict.set(key, tensordict.get(key)[samples, rows[:, :, None], cols[:, None, :]])
        tensordict.set("crop_shift", shift)
        return tensordict
