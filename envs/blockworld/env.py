"""``BlockWorldEnv``: one BlockWorld world behind the Gymnasium ``Env`` API."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.blockworld.engine import Engine, EngineConfig, draw_start
from worldsim.errors import SettingError
from worldsim.spaces import ActionSpec

ACTION_NVEC: tuple[int, ...] = (3, 3, 2, 3, 3, 2, 2, 10)
ACTION_NAMES: tuple[str, ...] = ("move", "strafe", "jump", "yaw", "pitch", "attack", "use", "hotbar")
ACTION_SPEC = ActionSpec("MultiDiscrete", ACTION_NVEC)
TICKS_PER_SECOND = 20
DEFAULT_MAX_STEPS = 2000


class BlockWorldEnv(gym.Env):
    """A first-person, Minecraft-like voxel world: walk, mine, build and survive.

    ## Description
    A procedurally generated, seeded, endless voxel world with biomes (plains, forest,
    desert, snow, water), trees, caves, ores (coal, iron, diamond), lava and bedrock, and a
    day-night cycle. The player walks with gravity and collision, jumps, swims, mines the
    block under the crosshair (it breaks after a number of ticks set by its hardness and
    drops into the 9-slot hotbar) and places the selected hotbar item against the face it
    looks at. Each step is one game tick at 20 ticks/s: walking covers 4.3 blocks/s
    (0.216 block per step), turning and looking move 5 degrees per step (a full turn
    is 72 steps), a jump rises about 1.25 blocks, and a day lasts ``day_length`` ticks
    (2,400 by default, i.e. 2 minutes: 0 is sunrise, 0.25 noon, 0.5 sunset, 0.75
    midnight).

    ## Action Space
    ``MultiDiscrete([3, 3, 2, 3, 3, 2, 2, 10])``: move (none/forward/back), strafe
    (none/left/right), jump, yaw (none/left/right), pitch (none/up/down), attack (hold to
    mine), use (place; repeats every 4 ticks while held) and hotbar (keep/slot 1..9).
    An action outside the space raises ``ValueError``.
    ``envs.blockworld.DiscreteActions`` offers a ``Discrete`` list of useful combinations.

    ## Observation Space
    ``Box(0, 255, (height, width, 3), uint8)``: the first-person RGB view with a
    crosshair, a health bar and the hotbar (selected slot framed white; each item shows as
    its colour with a yellow bar for the stack size).

    ## Rewards
    +1 the first time in an episode each achievement happens: collect_wood, collect_dirt,
    collect_sand, collect_stone, collect_coal, collect_iron, collect_diamond (mine one),
    place_block, swim (head under water), go_underground (feet below y = 16),
    climb_high (stand at y >= 46), travel_far (64 blocks from spawn), survive_night
    (be alive at the sunrise after a night). Plus 0.1 per health point gained and -0.1 per
    point lost.

    ## Starting State
    A new world from a seed drawn from ``np_random``, the player standing on the driest
    column nearest the origin, full health (20) and an empty hotbar. The time of day is
    uniform in [0, 1) unless ``options={"time_of_day": t}`` sets it; any other option key
    raises ``ValueError``.

    ## Episode End
    Terminated when health reaches 0 (falls over 3 blocks, lava, drowning). Truncated
    after ``max_steps`` steps.

    ## Arguments
    ``gymnasium.make("worldsim/BlockWorld-v0", width=64, height=64, render_mode=None,
    max_steps=2000, day_length=2400, view_distance=32.0, hud=True)``. Every argument is a
    plain JSON value, so recordings can store them and re-create the env.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": TICKS_PER_SECOND}

    def __init__(
        self,
        width: int = 64,
        height: int = 64,
        render_mode: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        day_length: int = 2400,
        view_distance: float = 32.0,
        hud: bool = True,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise SettingError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if max_steps < 1:
            raise SettingError(f"max_steps must be >= 1, got {max_steps}")
        self.render_mode = render_mode
        self.max_steps = int(max_steps)
        self.engine = Engine(1, EngineConfig(width, height, day_length, view_distance, hud))
        self.observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.action_space = ACTION_SPEC.to_space()
        self._steps = 0
        self._window = None
        self._reset_done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        world_seed, tod = draw_start(self.np_random, options)
        self.engine.reset_world(0, world_seed, tod)
        self._steps = 0
        self._reset_done = True
        obs = self.engine.render()[0].copy()
        if self.render_mode == "human":
            self._show(obs)
        return obs, self.engine.info(0)

    def step(self, action):
        if not self._reset_done:
            raise gym.error.ResetNeeded("call reset() before step(): there is no world yet")
        actions = ACTION_SPEC.as_array(action, ())[None]  # (1, 8)
        self.engine.step(actions)
        self._steps += 1
        obs = self.engine.render()[0].copy()
        p = self.engine.players[0]
        terminated = bool(p["dead"])
        truncated = self._steps >= self.max_steps and not terminated
        if self.render_mode == "human":
            self._show(obs)
        return obs, float(p["reward"]), terminated, truncated, self.engine.info(0)

    def render(self):
        if self.render_mode == "rgb_array":
            return self.engine.frames[0].copy()
        if self.render_mode == "human":
            self._show(self.engine.frames[0])
        return None

    def _show(self, frame: np.ndarray) -> None:
        from envs.window import FrameWindow

        if self._window is None:
            self._window = FrameWindow("BlockWorld", frame.shape[1], frame.shape[0])
        self._window.show(frame, self.metadata["render_fps"])

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None
