"""Heat maps of the learnt value over an OGBench pointmaze, one per evaluation task.

For a task's goal g, each point s of the maze's free cells is coloured by the critic's value there at the
policy's own action, min_k f_k(s, pi(s, g), g) (for a quasimetric energy, -d). The task's start and
goal are marked and one deterministic evaluation episode is drawn on it: a local maximum against a wall,
or a value that does not rise towards the goal, shows at a glance why a task stays unsolved.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

POINTS_PER_CELL = 6


def maze_grid(maze, points_per_cell: int = POINTS_PER_CELL) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Points spread evenly over the maze's map: ``xy`` ``[rows, columns, 2]``, a mask of those inside
    free cells, and the ``(left, right, bottom, top)`` extent of the map in the maze's coordinates."""
    unit = maze._maze_unit
    rows, columns = (points_per_cell * n for n in maze.maze_map.shape)
    x = (np.arange(columns) + 0.5) / points_per_cell * unit - maze._offset_x - unit / 2
    y = (np.arange(rows) + 0.5) / points_per_cell * unit - maze._offset_y - unit / 2
    xy = np.stack(np.meshgrid(x, y), -1)
    cells = np.arange(rows) // points_per_cell, np.arange(columns) // points_per_cell
    free = maze.maze_map[np.ix_(*cells)] == 0
    extent = (x[0] - unit / (2 * points_per_cell), x[-1] + unit / (2 * points_per_cell),
              y[0] - unit / (2 * points_per_cell), y[-1] + unit / (2 * points_per_cell))
    return xy, free, extent


@torch.no_grad()
def value_map(loss_module, actor, xy: np.ndarray, goal: np.ndarray, observation_key="observation",
              goal_key="desired_goal") -> np.ndarray:
    """``[rows, columns]``: min over critics of f(s, pi(s, g), g) at every point s of ``xy``, the policy
    acting with its mode (clipped to the action bounds)."""
    device = next(loss_module.critic_network_params.values(True, True)).device
    states = torch.as_tensor(xy.reshape(-1, 2), dtype=torch.float32, device=device)
    goals = torch.as_tensor(goal, dtype=torch.float32, device=device).expand_as(states)
    inputs = TensorDict({observation_key: states, goal_key: goals}, batch_size=[len(states)])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        actions = actor(inputs)["action"]
    critic = loss_module.critic_network
    with loss_module.critic_network_params.to_module(critic):
        values = loss_module.paired(critic.encode_state_action(states, actions), critic.encode_goal(goals))
    return values.min(0).values.reshape(xy.shape[:2]).cpu().numpy()


def first_episode_path(rollout: TensorDict) -> np.ndarray:
    """``[T + 1, 2]``: the positions of the first env's episode in an evaluation rollout, up to its end."""
    first = rollout[0] if rollout.batch_dims > 1 else rollout
    done = first["next", "done"].reshape(-1)
    length = int(done.int().argmax()) + 1 if done.any() else len(done)
    positions = torch.cat([first["observation"][:1], first["next", "observation"][:length]])
    return positions[..., :2].cpu().numpy()


def draw_value_map(values: np.ndarray, free: np.ndarray, extent: tuple, start, goal, path: np.ndarray,
                   title: str, output: Path) -> np.ndarray:
    """Save the heat map as a PNG at ``output`` and return it as a ``[H, W, 3]`` uint8 image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masked = np.ma.masked_where(~free, values)
    colormap = plt.get_cmap("viridis").copy()
    colormap.set_bad("0.25")  # walls
    figure, axis = plt.subplots(figsize=(4.8, 4.2))
    image = axis.imshow(masked, origin="lower", extent=extent, cmap=colormap)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="min_k f(s, pi(s, g), g)")
    axis.plot(path[:, 0], path[:, 1], color="white", linewidth=1.2, label="evaluation episode")
    axis.scatter(*start, marker="o", s=70, color="tab:orange", edgecolor="black", zorder=3, label="start")
    axis.scatter(*goal, marker="*", s=180, color="tab:red", edgecolor="black", zorder=3, label="goal")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=3, fontsize=7, frameon=False)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=90)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels


def log_image(logger, name: str, image: np.ndarray, step: int) -> None:
    """One image to wandb or tensorboard; torchrl's loggers log scalars and videos but no images."""
    if logger is None:
        return
    from torchrl.record.loggers import TensorboardLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        logger.experiment.log({name: wandb.Image(image)}, step=step)
    elif isinstance(logger, TensorboardLogger):
        logger.experiment.add_image(name, image, step, dataformats="HWC")


class ValueMaps:
    """After each evaluation, the value map of every task with its start, goal and the first evaluation
    episode: saved as ``output_dir/value_map_step{step}_task{k}.png`` and logged as
    ``eval/value_map_task{k}``."""

    def __init__(self, cfg, maze, loss_module, actor, logger, output_dir: Path) -> None:
        self.env_name = cfg.env.env_name
        self.loss_module, self.actor, self.logger, self.output_dir = loss_module, actor, logger, output_dir
        self.xy, self.free, self.extent = maze_grid(maze)

    def __call__(self, rollouts: dict, step: int) -> list[Path]:
        outputs = []
        for task, rollout in rollouts.items():
            first = rollout[0] if rollout.batch_dims > 1 else rollout
            start = first["observation"][0, :2].cpu().numpy()
            goal = first["desired_goal"][0].cpu().numpy()
            values = value_map(self.loss_module, self.actor, self.xy, goal)
            output = self.output_dir / f"value_map_step{step}_task{task}.png"
            image = draw_value_map(values, self.free, self.extent, start, goal[:2], first_episode_path(rollout),
                                   f"{self.env_name} task {task}, step {step}", output)
            log_image(self.logger, f"eval/value_map_task{task}", image, step)
            outputs.append(output)
        return outputs
