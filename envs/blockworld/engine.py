"""The BlockWorld engine: N worlds stepped and rendered together, with no Gymnasium in it.

``Engine`` owns the state (player records and loaded chunks) of a batch of worlds and
exposes reset, step and render. ``BlockWorldEnv`` is an engine with one world and
``BlockWorldVectorEnv`` one with N, so both share every line of game logic.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from envs.blockworld.achievements import ACHIEVEMENT_NAMES
from envs.blockworld.blocks import AIR, BLOCK_NAMES
from envs.blockworld.physics import (
    AIR_TICKS,
    HALF_WIDTH,
    MAX_HEALTH,
    PLAYER_DTYPE,
    REACH,
    player_in_water,
)
from envs.blockworld.region import MAX_VIEW_DISTANCE, Regions, find_spawn
from envs.blockworld.render import draw_hud, render_worlds
from envs.blockworld.tick import refresh_targets, step_players
from envs.blockworld.worldgen import BIOME_NAMES, column
from worldsim.cpus import usable_cpus
from worldsim.errors import SettingError

RENDER_SLICES_PER_THREAD = 8
"""A batch is rendered in this many slices per render thread (see ``Engine.render``)."""

@dataclass(frozen=True)
class EngineConfig:
    """Settings shared by all worlds of an engine. All plain JSON-able values."""

    width: int = 64
    """Frame width in pixels."""
    height: int = 64
    """Frame height in pixels."""
    day_length: int = 2400
    """Ticks per full day-night cycle (2 minutes at 20 ticks/s)."""
    view_distance: float = 32.0
    """Blocks to the fog wall."""
    hud: bool = True
    """Draw the crosshair, health bar and hotbar."""
    render_threads: int = 0
    """Threads rendering a batch of worlds; 0 uses one per CPU. One world uses one thread."""

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            # A size from numpy (np.arange in a sweep, an array's shape) is a size: kept as a plain
            # int, so that the config stays JSON-able. A bool is not a size.
            value = getattr(self, name)
            if isinstance(value, np.integer) and not isinstance(value, np.bool_):
                object.__setattr__(self, name, int(value))
        sizes_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.width, self.height))
        if not sizes_ok or min(self.width, self.height) < 8:
            raise SettingError(f"width and height must be integers >= 8, got width={self.width!r}, height={self.height!r}")
        if self.day_length < 1:
            raise SettingError(f"day_length must be a positive number of ticks, got {self.day_length}")
        if not 1.0 <= self.view_distance <= MAX_VIEW_DISTANCE:
            raise SettingError(f"view_distance must be in [1, {MAX_VIEW_DISTANCE}], got {self.view_distance}")


RESET_OPTIONS = ("time_of_day",)
"""The keys ``reset(options=...)`` takes; any other is refused, not ignored."""


def check_reset_options(options: dict | None) -> None:
    """Refuse reset options BlockWorld would ignore: a typo would otherwise leave the time
    random, and ``reset_mask`` would reset every world of a vector env, not the chosen ones.

    Raises:
        SettingError: Naming the unknown keys.
    """
    unknown = sorted(set(options or {}) - set(RESET_OPTIONS), key=str)
    if unknown:
        hint = " (the vector env autoresets in NEXT_STEP mode; it has no partial reset)" if "reset_mask" in unknown else ""
        raise SettingError(f"unknown reset options {unknown}; BlockWorld takes {list(RESET_OPTIONS)}{hint}")


def draw_start(np_random: np.random.Generator, options: dict | None) -> tuple[int, float]:
    """World seed and start time of day for a reset, drawn from the env's generator.

    ``options={"time_of_day": t}`` fixes the time (t in [0, 1]); otherwise it is uniform,
    so that recorded data covers day and night alike. Other keys raise :class:`SettingError`.
    """
    check_reset_options(options)
    world_seed = int(np_random.integers(0, 2**31 - 1))
    tod = float(np_random.random())
    if options and "time_of_day" in options:
        tod = float(options["time_of_day"])
        if not 0.0 <= tod <= 1.0:
            raise SettingError(f"options['time_of_day'] must be in [0, 1], got {tod}")
    return world_seed, tod


class Engine:
    """State and rules of ``num_worlds`` independent BlockWorld worlds.

    Args:
        num_worlds: Batch size.
        config: Shared settings.
    """

    def __init__(self, num_worlds: int, config: EngineConfig) -> None:
        self.config = config
        self.num_worlds = num_worlds
        self.players = np.zeros(num_worlds, dtype=PLAYER_DTYPE)
        self.regions = Regions(num_worlds)
        self.frames = np.zeros((num_worlds, config.height, config.width, 3), dtype=np.uint8)
        threads = config.render_threads or usable_cpus()
        self._threads = range(min(threads, num_worlds))
        # Kernels release the GIL, so plain threads render slices of the batch in parallel.
        self._pool = ThreadPoolExecutor(len(self._threads)) if len(self._threads) > 1 else None
        self._pool_pid = os.getpid()

    def reset_world(self, w: int, world_seed: int, time_of_day: float) -> None:
        """Generate world ``w`` from ``world_seed`` and put a fresh player at its spawn."""
        x, z = find_spawn(world_seed)
        self.regions.reset_world(w, world_seed, x, z)
        x, z, ground = self.regions.open_ground(w, x, z)
        p = np.zeros((), dtype=PLAYER_DTYPE)
        p["pos"] = (x, ground + 1.0, z)
        p["spawn"] = p["pos"]
        p["fall_peak"] = ground + 1.0
        p["health"] = MAX_HEALTH
        p["air"] = AIR_TICKS
        p["time0"] = time_of_day
        p["day_length"] = float(self.config.day_length)
        p["world_seed"] = world_seed
        p["on_ground"] = 1
        p["biome"] = column(world_seed, int(np.floor(x)), int(np.floor(z)))[1]
        self.players[w] = p
        refresh_targets(self.players[w : w + 1], self.regions.blocks[w : w + 1])

    def place_player(self, w: int, x: float, y: float, z: float, yaw: float = 0.0, pitch: float = 0.0) -> None:
        """Move world ``w``'s player (feet centre) and view; for scripted scenes and tests."""
        p = self.players[w : w + 1]
        p["pos"][0] = (x, y, z)
        p["fall_peak"] = y
        p["vel"][0] = 0.0
        p["yaw"] = yaw % 360.0
        p["pitch"] = pitch
        self.regions.follow(w, x, z)
        refresh_targets(self.players[w : w + 1], self.regions.blocks[w : w + 1])

    def step(self, actions: np.ndarray) -> None:
        """Advance every world one tick with int64 ``actions`` (num_worlds, 8)."""
        r = self.regions
        step_players(self.players, r.blocks, r.dirty, r.top, r.occ, r.clear, r.peaks, actions)
        pos = self.players["pos"]  # (num_worlds, 3)
        # The square re-centres before the view, or the crosshair's reach, gets within a block
        # of its edge: past the edge, cells wrap round to the far side of the square.
        margin = max(self.config.view_distance, REACH + HALF_WIDTH) + 1.0
        for w in r.near_edge(pos, margin).tolist():
            r.follow(w, float(pos[w, 0]), float(pos[w, 2]))

    def render(self) -> np.ndarray:
        """Render all worlds into ``self.frames`` (num_worlds, H, W, 3) and return it."""
        if self._pool is not None and self._pool_pid != os.getpid():
            # A forked child (a DataLoader or Pool worker handed this env) holds the parent's
            # pool but none of its threads: jobs submitted to it waited forever. Start its own.
            self._pool, self._pool_pid = ThreadPoolExecutor(len(self._threads)), os.getpid()
        if self._pool is None:
            self._render_slice(0, self.num_worlds)
        else:
            # Many small slices, taken by whichever thread is free: worlds differ in cost (a
            # cave view traces more than an open sky) and a shared CPU stalls threads, so
            # one fixed half per thread left one waiting on the other. 8 per thread ran a
            # 64-world step 1.2x faster than halves (in-process A/B, 5 rounds, busy machine).
            n = min(self.num_worlds, RENDER_SLICES_PER_THREAD * len(self._threads))
            bounds = np.linspace(0, self.num_worlds, n + 1).astype(int)
            jobs = [self._pool.submit(self._render_slice, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
            for job in jobs:
                job.result()
        return self.frames

    def _render_slice(self, a: int, b: int) -> None:
        r = self.regions
        view = float(self.config.view_distance)
        frames = self.frames[a:b]
        render_worlds(self.players[a:b], r.blocks[a:b], r.clear[a:b], r.peaks[a:b], r.top[a:b], view, frames)
        if self.config.hud:
            draw_hud(self.players[a:b], frames)

    def close(self) -> None:
        """Stop the render threads (the engine still works, single-threaded)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def time_of_day(self, w: int) -> float:
        """World ``w``'s time of day: 0 sunrise, 0.25 noon, 0.5 sunset, 0.75 midnight."""
        p = self.players[w]
        return float((p["time0"] + p["tick"] / p["day_length"]) % 1.0)

    def in_water(self, w: int) -> bool:
        """Whether world ``w``'s player touches water (``in_fluid`` counts lava too)."""
        return bool(player_in_water(self.regions.blocks[w], self.players[w]["pos"]))

    def info(self, w: int) -> dict:
        """JSON-able description of world ``w``'s player, for ``info`` dicts."""
        # One .item() turns the record into Python values at once; field-by-field numpy
        # scalar access cost more than the physics of a step.
        rec = dict(zip(PLAYER_DTYPE.names, self.players[w].item()))
        target = rec["target_block"]
        has_target = target != AIR
        return {
            "inventory": [
                (BLOCK_NAMES[i], n) if n > 0 else (None, 0)
                for i, n in zip(rec["inv_id"].tolist(), rec["inv_count"].tolist())
            ],
            "selected_slot": rec["selected"],
            "achievements": [name for name, got in zip(ACHIEVEMENT_NAMES, rec["achieved"].tolist()) if got],
            "health": rec["health"],
            "position": tuple(rec["pos"].tolist()),
            "yaw": rec["yaw"],
            "pitch": rec["pitch"],
            "on_ground": bool(rec["on_ground"]),
            "in_water": bool(rec["in_fluid"]) and self.in_water(w),
            "time_of_day": (rec["time0"] + rec["tick"] / rec["day_length"]) % 1.0,
            "biome": BIOME_NAMES[rec["biome"]],
            "target_block": BLOCK_NAMES[target] if has_target else None,
            "target_position": tuple(rec["target_pos"].tolist()) if has_target else None,
            "target_distance": rec["target_dist"] if has_target else None,
            "mined": BLOCK_NAMES[rec["mined_block"]] if rec["mined_block"] != AIR else None,
            "placed": BLOCK_NAMES[rec["placed"]] if rec["placed"] != AIR else None,
            "tick": rec["tick"],
        }
