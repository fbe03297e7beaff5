"""Achievements as data: Crafter-style, each worth +1 the first time it happens in an episode.

Each achievement is a (kind, argument) rule that the step kernel checks every tick. Kinds:

- ``collect``: an item with id ``arg`` entered the inventory by mining.
- ``place``: any block was placed (``arg`` unused).
- ``swim``: the player's head was in water.
- ``depth``: the player's feet were below ``y = arg``.
- ``height``: the player's feet were at or above ``y = arg``.
- ``travel``: the player stood ``arg`` blocks or more (horizontally) from the spawn point.
- ``dawn``: the player was alive when a night ended (the time of day passed sunrise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.blockworld.blocks import BLOCK_ID


@dataclass(frozen=True)
class Achievement:
    """One achievement rule.

    Attributes:
        name: Name reported in ``info["achievements"]``.
        kind: One of the kinds listed in the module docstring.
        arg: The kind's argument (item id, height, distance); 0 where unused.
    """

    name: str
    kind: str
    arg: int = 0


KINDS: tuple[str, ...] = ("collect", "place", "swim", "depth", "height", "travel", "dawn")
KIND_ID: dict[str, int] = {k: i for i, k in enumerate(KINDS)}

ACHIEVEMENTS: tuple[Achievement, ...] = (
    Achievement("collect_wood", "collect", BLOCK_ID["wood"]),
    Achievement("collect_dirt", "collect", BLOCK_ID["dirt"]),
    Achievement("collect_sand", "collect", BLOCK_ID["sand"]),
    Achievement("collect_stone", "collect", BLOCK_ID["stone"]),
    Achievement("collect_coal", "collect", BLOCK_ID["coal"]),
    Achievement("collect_iron", "collect", BLOCK_ID["iron"]),
    Achievement("collect_diamond", "collect", BLOCK_ID["diamond"]),
    Achievement("place_block", "place"),
    Achievement("swim", "swim"),
    Achievement("go_underground", "depth", 16),
    Achievement("climb_high", "height", 46),
    Achievement("travel_far", "travel", 64),
    Achievement("survive_night", "dawn"),
)

ACHIEVEMENT_NAMES: tuple[str, ...] = tuple(a.name for a in ACHIEVEMENTS)
NUM_ACHIEVEMENTS = len(ACHIEVEMENTS)
ACH_KIND = np.array([KIND_ID[a.kind] for a in ACHIEVEMENTS], dtype=np.int32)
ACH_ARG = np.array([a.arg for a in ACHIEVEMENTS], dtype=np.int32)
