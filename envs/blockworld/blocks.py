"""Block and item types as one frozen table, plus the flat arrays the numba kernels read.

The table is the single source of truth for BlockWorld's rules about materials: whether a
block is solid, how many ticks of attacking break it, what it drops, whether it can be
placed, and what it looks like. Kernels cannot read dataclasses, so the module derives
plain numpy arrays (``SOLID``, ``HARDNESS``, ...) from the table once, at import.

Ids are stable: recordings and the world model never see them (they see pixels), but
``info["inventory"]`` reports names, and tests build worlds by id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockType:
    """One block or item kind.

    Attributes:
        name: Name reported in ``info`` (``"stone"``, ``"coal"``...).
        solid: Whether the player collides with it.
        hardness: Ticks of holding attack needed to break it; ``-1`` never breaks,
            ``0`` cannot be targeted (air, fluids).
        drop: Name of the item added to the inventory when broken, ``None`` for nothing.
        placeable: Whether ``use`` can place it from the hotbar.
        top: RGB of the top face's base colour.
        side: RGB of the side faces' base colour.
        pattern: Texture recipe name: ``"speckle"``, ``"ore"``, ``"log"``, ``"leaves"``,
            ``"grass"``, ``"flat"`` or ``"item"`` (never in the world).
        accent: Second colour used by the pattern (ore spots, grass strip, bark).
    """

    name: str
    solid: bool
    hardness: int
    drop: str | None
    placeable: bool
    top: tuple[int, int, int]
    side: tuple[int, int, int]
    pattern: str
    accent: tuple[int, int, int] = (0, 0, 0)


# Hardness is in ticks at 20 ticks/s, bare-handed but far quicker than Minecraft's
# (stone there takes 7.5 s by hand), so that an exploring agent actually collects things.
BLOCKS: tuple[BlockType, ...] = (
    BlockType("air", False, 0, None, False, (0, 0, 0), (0, 0, 0), "flat"),
    BlockType("bedrock", True, -1, None, False, (60, 60, 64), (60, 60, 64), "speckle", (25, 25, 28)),
    BlockType("stone", True, 30, "stone", True, (128, 128, 132), (122, 122, 126), "speckle", (98, 98, 102)),
    BlockType("dirt", True, 10, "dirt", True, (134, 96, 67), (134, 96, 67), "speckle", (108, 76, 52)),
    BlockType("grass", True, 12, "dirt", True, (96, 160, 60), (134, 96, 67), "grass", (84, 142, 52)),
    BlockType("sand", True, 10, "sand", True, (219, 207, 152), (214, 201, 146), "speckle", (196, 182, 126)),
    BlockType("snow", True, 10, "snow", True, (240, 245, 250), (134, 96, 67), "grass", (222, 230, 238)),
    BlockType("water", False, 0, None, False, (48, 92, 200), (44, 84, 190), "flat"),
    BlockType("lava", False, 0, None, False, (230, 96, 20), (220, 80, 16), "speckle", (255, 170, 40)),
    BlockType("wood", True, 24, "wood", True, (160, 128, 80), (104, 80, 48), "log", (82, 62, 36)),
    BlockType("leaves", True, 4, None, False, (56, 122, 40), (56, 122, 40), "leaves", (36, 92, 28)),
    BlockType("coal_ore", True, 40, "coal", False, (122, 122, 126), (122, 122, 126), "ore", (30, 30, 30)),
    BlockType("iron_ore", True, 60, "iron", False, (122, 122, 126), (122, 122, 126), "ore", (216, 168, 130)),
    BlockType("diamond_ore", True, 80, "diamond", False, (122, 122, 126), (122, 122, 126), "ore", (80, 230, 230)),
    BlockType("cactus", True, 6, "cactus", True, (80, 150, 60), (60, 130, 44), "log", (40, 100, 30)),
    BlockType("gravel", True, 12, "gravel", True, (136, 126, 122), (136, 126, 122), "speckle", (100, 92, 90)),
    BlockType("coal", False, 0, None, False, (30, 30, 30), (30, 30, 30), "item"),
    BlockType("iron", False, 0, None, False, (216, 190, 170), (216, 190, 170), "item"),
    BlockType("diamond", False, 0, None, False, (90, 235, 235), (90, 235, 235), "item"),
)

BLOCK_NAMES: tuple[str, ...] = tuple(b.name for b in BLOCKS)
BLOCK_ID: dict[str, int] = {name: i for i, name in enumerate(BLOCK_NAMES)}

AIR = BLOCK_ID["air"]
BEDROCK = BLOCK_ID["bedrock"]
STONE = BLOCK_ID["stone"]
DIRT = BLOCK_ID["dirt"]
GRASS = BLOCK_ID["grass"]
SAND = BLOCK_ID["sand"]
SNOW = BLOCK_ID["snow"]
WATER = BLOCK_ID["water"]
LAVA = BLOCK_ID["lava"]
WOOD = BLOCK_ID["wood"]
LEAVES = BLOCK_ID["leaves"]
COAL_ORE = BLOCK_ID["coal_ore"]
IRON_ORE = BLOCK_ID["iron_ore"]
DIAMOND_ORE = BLOCK_ID["diamond_ore"]
CACTUS = BLOCK_ID["cactus"]
GRAVEL = BLOCK_ID["gravel"]

NUM_BLOCKS = len(BLOCKS)
SOLID = np.array([b.solid for b in BLOCKS], dtype=np.bool_)
HARDNESS = np.array([b.hardness for b in BLOCKS], dtype=np.int32)
DROP = np.array([BLOCK_ID[b.drop] if b.drop else AIR for b in BLOCKS], dtype=np.int32)
PLACEABLE = np.array([b.placeable for b in BLOCKS], dtype=np.bool_)
# The hotbar HUD shows each item as one swatch of this colour.
ICON = np.array([b.top for b in BLOCKS], dtype=np.uint8)

TEXTURE_SIZE = 8
"""Texels per block edge. At 64x64 a block three steps away spans about 12 pixels."""

# Face kinds in TEXTURES' second axis.
FACE_TOP, FACE_SIDE, FACE_BOTTOM = 0, 1, 2


def _face_texture(block: BlockType, face: int, rng: np.random.Generator) -> np.ndarray:
    """An 8x8x3 texture for one face, from the block's pattern recipe."""
    n = TEXTURE_SIZE
    base = np.array(block.top if face == FACE_TOP else block.side, dtype=np.float64)
    accent = np.array(block.accent, dtype=np.float64)
    jitter = rng.uniform(-1.0, 1.0, size=(n, n, 1))
    tex = base + jitter * 10.0
    if block.pattern == "speckle":
        tex = np.where(rng.uniform(size=(n, n, 1)) < 0.25, accent + jitter * 6.0, tex)
    elif block.pattern == "ore":
        spots = rng.uniform(size=(n, n, 1)) < 0.22
        tex = np.where(spots, accent + jitter * 12.0, tex)
    elif block.pattern == "leaves":
        tex = np.where(rng.uniform(size=(n, n, 1)) < 0.4, accent + jitter * 8.0, tex)
    elif block.pattern == "log":
        if face == FACE_SIDE:
            stripes = (np.arange(n)[None, :, None] % 3) == 0  # vertical bark lines
            tex = np.where(stripes, accent + jitter * 6.0, tex)
        else:
            yy, xx = np.mgrid[0:n, 0:n]
            r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)[..., None]
            tex = np.where((r > 2.5) | ((r > 0.9) & (r < 1.6)), accent + jitter * 6.0, tex)
    elif block.pattern == "grass":
        if face == FACE_SIDE:
            # Rows are top-to-bottom: the top strip carries the top colour, ragged.
            depth = 2 + (rng.uniform(size=(1, n, 1)) < 0.5)
            rows = np.arange(n)[:, None, None]
            tex = np.where(rows < depth, np.array(block.top, dtype=np.float64) + jitter * 8.0, tex)
        elif face == FACE_TOP:
            tex = np.where(rng.uniform(size=(n, n, 1)) < 0.3, accent + jitter * 6.0, tex)
        else:
            tex = np.array(BLOCKS[BLOCK_ID["dirt"]].side, dtype=np.float64) + jitter * 10.0
    return np.clip(tex, 0, 255).astype(np.uint8)


def _build_textures() -> np.ndarray:
    # A fixed generator: textures are part of the game's look, identical in every process.
    rng = np.random.default_rng(20240611)
    tex = np.zeros((NUM_BLOCKS, 3, TEXTURE_SIZE, TEXTURE_SIZE, 3), dtype=np.uint8)
    for i, block in enumerate(BLOCKS):
        for face in (FACE_TOP, FACE_SIDE, FACE_BOTTOM):
            tex[i, face] = _face_texture(block, face, rng)
    return tex


TEXTURES: np.ndarray = _build_textures()
"""uint8 (num_blocks, 3 faces [top, side, bottom], 8, 8, RGB); texture rows run top to bottom."""
