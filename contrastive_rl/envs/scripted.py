"""Scripted goal-reaching controllers, the data policies of the datasets that make_dataset.py writes."""
from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

SCRIPTED_ENVS = ("PointMaze_", "FetchReach")


class PointMazeController:
    """Follow the shortest cell path to the goal (breadth-first over the maze map), steering to the next
    cell's centre with a PD law on the ball's position and velocity."""

    def __init__(self, env: gym.Env, gain: float = 10.0, damping: float = 1.0) -> None:
        self.maze = env.unwrapped.maze
        self.gain, self.damping = gain, damping

    def _next_cell(self, start: tuple[int, int], goal: tuple[int, int]) -> tuple[int, int]:
        parents = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if cell == goal:
                break
            row, col = cell
            for neighbour in ((row + 1, col), (row - 1, col), (row, col + 1), (row, col - 1)):
                if neighbour not in parents and self.maze.maze_map[neighbour[0]][neighbour[1]] != 1:
                    parents[neighbour] = cell
                    queue.append(neighbour)
        if goal not in parents:
            return start
        cell = goal
        while parents[cell] is not None and parents[cell] != start:
            cell = parents[cell]
        return cell

    def __call__(self, observation: dict) -> np.ndarray:
        position, velocity = observation["observation"][:2], observation["observation"][2:4]
        goal = observation["desired_goal"]
        start = tuple(self.maze.cell_xy_to_rowcol(position))
        goal_cell = tuple(self.maze.cell_xy_to_rowcol(goal))
        waypoint = goal if start == goal_cell else self.maze.cell_rowcol_to_xy(self._next_cell(start, goal_cell))
        return np.clip(self.gain * (waypoint - position) - self.damping * velocity, -1.0, 1.0)


class FetchReachController:
    """Move the gripper straight at the goal."""

    def __init__(self, env: gym.Env, gain: float = 10.0) -> None:
        self.gain = gain

    def __call__(self, observation: dict) -> np.ndarray:
        gripper = observation["observation"][:3]
        move = np.clip(self.gain * (observation["desired_goal"] - gripper), -1.0, 1.0)
        return np.append(move, 0.0)


def make_controller(env_name: str, env: gym.Env):
    if env_name.startswith("PointMaze_"):
        return PointMazeController(env)
    if env_name.startswith("FetchReach"):
        return FetchReachController(env)
    raise ValueError(
        f"no scripted controller for {env_name}: scripted data covers {', '.join(SCRIPTED_ENVS)}; "
        "use --policy random"
    )
