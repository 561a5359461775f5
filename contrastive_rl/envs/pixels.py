"""Learning from pixels: rendered observations and goal images, the shared CNN encoder, random-crop
augmentation."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

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


