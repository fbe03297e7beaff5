"""Seeded procedural terrain, generated one 16x16 chunk column at a time (numba).

Every voxel is a pure function of ``(seed, x, y, z)``: heights, biomes, caves and ores come
from hashed value noise in world coordinates, and trees are decided per column from a hash,
so a chunk generated on its own matches its neighbours seamlessly and regenerating an
unloaded chunk gives it back exactly. Trees whose trunk stands in a neighbouring column
still reach into this chunk, because each chunk also looks two columns past its edges.

Layout: ``y`` runs from 0 (bedrock) to ``WORLD_HEIGHT - 1``; the sea fills up to
``SEA_LEVEL``. Biomes: plains, forest, desert, snow (with hills), and water where the
ground lies below the sea. Caves are "spaghetti" tunnels (where two 3-D noises are both
near zero); cave air below ``LAVA_LEVEL`` is lava.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.blockworld.blocks import (
    AIR,
    BEDROCK,
    CACTUS,
    COAL_ORE,
    DIAMOND_ORE,
    DIRT,
    GRASS,
    GRAVEL,
    IRON_ORE,
    LAVA,
    LEAVES,
    SAND,
    SNOW,
    STONE,
    WATER,
    WOOD,
)
from envs.blockworld.jit_cache import CACHE

CHUNK = 16
"""Chunk edge in blocks (x and z)."""
WORLD_HEIGHT = 64
"""Blocks from bedrock (y = 0) to the sky limit."""
SEA_LEVEL = 28
"""Highest y filled with water in oceans and lakes."""
LAVA_LEVEL = 8
"""Cave air at or below this y is lava."""

BIOME_NAMES: tuple[str, ...] = ("plains", "forest", "desert", "snow", "water")
PLAINS, FOREST, DESERT, SNOWY, OCEAN = 0, 1, 2, 3, 4

# splitmix64's multipliers as signed int64: numba wraps int64 products, which is what a
# hash wants; mixing uint64 and int64 would silently turn the arithmetic into floats.
_M1 = -4658895280553007687
_M2 = -7723592293110705685


@njit(cache=CACHE, nogil=True)
def hash3(seed: int, x: int, y: int, z: int) -> int:
    """A 64-bit mix of a seed and three integer coordinates."""
    h = seed * 6364136223846793005 + x * 73856093 + y * 19349663 + z * 83492791
    h = (h ^ (h >> 30)) * _M1
    h = (h ^ (h >> 27)) * _M2
    return h ^ (h >> 31)


@njit(cache=CACHE, nogil=True)
def rand01(seed: int, x: int, y: int, z: int) -> float:
    """Uniform in [0, 1), a pure function of its arguments."""
    return (hash3(seed, x, y, z) & 0xFFFFFF) / 16777216.0


@njit(cache=CACHE, nogil=True)
def _smooth(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


@njit(cache=CACHE, nogil=True)
def value_noise2(seed: int, x: float, z: float) -> float:
    """Smoothly interpolated lattice noise in [-1, 1]."""
    ix = int(np.floor(x))
    iz = int(np.floor(z))
    fx = _smooth(x - ix)
    fz = _smooth(z - iz)
    a = rand01(seed, ix, 0, iz)
    b = rand01(seed, ix + 1, 0, iz)
    c = rand01(seed, ix, 0, iz + 1)
    d = rand01(seed, ix + 1, 0, iz + 1)
    top = a + (b - a) * fx
    bot = c + (d - c) * fx
    return (top + (bot - top) * fz) * 2.0 - 1.0


@njit(cache=CACHE, nogil=True)
def fbm2(seed: int, x: float, z: float, octaves: int) -> float:
    """Fractal sum of ``octaves`` value-noise layers, each twice as fine and half as strong."""
    total = 0.0
    amp = 1.0
    norm = 0.0
    for o in range(octaves):
        total += amp * value_noise2(seed + o * 1013, x, z)
        norm += amp
        amp *= 0.5
        x *= 2.0
        z *= 2.0
    return total / norm


@njit(cache=CACHE, nogil=True)
def value_noise3(seed: int, x: float, y: float, z: float) -> float:
    """Trilinear lattice noise in [-1, 1]."""
    ix = int(np.floor(x))
    iy = int(np.floor(y))
    iz = int(np.floor(z))
    fx = _smooth(x - ix)
    fy = _smooth(y - iy)
    fz = _smooth(z - iz)
    c000 = rand01(seed, ix, iy, iz)
    c100 = rand01(seed, ix + 1, iy, iz)
    c010 = rand01(seed, ix, iy + 1, iz)
    c110 = rand01(seed, ix + 1, iy + 1, iz)
    c001 = rand01(seed, ix, iy, iz + 1)
    c101 = rand01(seed, ix + 1, iy, iz + 1)
    c011 = rand01(seed, ix, iy + 1, iz + 1)
    c111 = rand01(seed, ix + 1, iy + 1, iz + 1)
    x00 = c000 + (c100 - c000) * fx
    x10 = c010 + (c110 - c010) * fx
    x01 = c001 + (c101 - c001) * fx
    x11 = c011 + (c111 - c011) * fx
    y0 = x00 + (x10 - x00) * fy
    y1 = x01 + (x11 - x01) * fy
    return (y0 + (y1 - y0) * fz) * 2.0 - 1.0


@njit(cache=CACHE, nogil=True)
def column(seed: int, x: int, z: int) -> tuple[int, int]:
    """Surface height (y of the top solid block) and biome id of the column at (x, z)."""
    continent = fbm2(seed + 11, x / 128.0, z / 128.0, 3)
    detail = fbm2(seed + 23, x / 32.0, z / 32.0, 3)
    temperature = fbm2(seed + 37, x / 200.0, z / 200.0, 2)
    moisture = fbm2(seed + 41, x / 160.0, z / 160.0, 2)
    base = SEA_LEVEL + 3.0 + continent * 24.0 + detail * 4.0
    if temperature < -0.22 and detail > 0.0:
        base += detail * 24.0  # cold lands get hills
    h = min(max(int(base), 4), 50)
    if h < SEA_LEVEL:
        return h, OCEAN
    if temperature > 0.15 and moisture < 0.1:
        return h, DESERT
    if temperature < -0.22:
        return h, SNOWY
    if moisture > 0.0:
        return h, FOREST
    return h, PLAINS


@njit(cache=CACHE, nogil=True)
def _tree_at(seed: int, x: int, z: int, h: int, biome: int) -> int:
    """Trunk height of a tree rooted on column (x, z), or 0 for no tree."""
    if biome == FOREST:
        p = 0.02
    elif biome == PLAINS:
        p = 0.006
    elif biome == SNOWY:
        p = 0.012
    else:
        return 0
    if h < SEA_LEVEL + 1 or h > 50 or rand01(seed + 5, x, 0, z) >= p:
        return 0
    return 4 + (hash3(seed + 6, x, 0, z) & 0x7FFFFFFF) % 3


@njit(cache=CACHE, nogil=True)
def _is_cave(seed: int, x: int, y: int, z: int) -> bool:
    a = value_noise3(seed + 101, x / 18.0, y / 10.0, z / 18.0)
    b = value_noise3(seed + 202, x / 18.0, y / 10.0, z / 18.0)
    return a * a + b * b < 0.012


@njit(cache=CACHE, nogil=True)
def _ore(seed: int, x: int, y: int, z: int) -> int:
    """Ore id replacing stone at (x, y, z), or STONE. Ores come in small 2x2x2 blobs."""
    bx, by, bz = x >> 1, y >> 1, z >> 1
    if y < 16 and rand01(seed + 303, bx, by, bz) < 0.012 and rand01(seed + 304, x, y, z) < 0.6:
        return DIAMOND_ORE
    if y < 34 and rand01(seed + 305, bx, by, bz) < 0.02 and rand01(seed + 306, x, y, z) < 0.6:
        return IRON_ORE
    if y < 52 and rand01(seed + 307, bx, by, bz) < 0.035 and rand01(seed + 308, x, y, z) < 0.6:
        return COAL_ORE
    return STONE


@njit(cache=CACHE, nogil=True)
def generate_chunk(seed: int, cx: int, cz: int, region: np.ndarray) -> int:
    """Write chunk (cx, cz) into its ring-buffer slot of ``region`` and return its top y.

    Args:
        seed: World seed.
        cx: Chunk x (world x // 16).
        cz: Chunk z.
        region: uint8 (R, R, WORLD_HEIGHT) loaded blocks of one world, indexed
            ``[x mod R, z mod R, y]``; R is a multiple of 16 and a power of two.

    Returns:
        One more than the highest non-air y in the chunk (the sky starts there).
    """
    mask = region.shape[0] - 1
    x0 = cx * CHUNK
    z0 = cz * CHUNK
    top = 0
    for lx in range(CHUNK):
        for lz in range(CHUNK):
            x = x0 + lx
            z = z0 + lz
            col = region[x & mask, z & mask]
            col[:] = AIR
            h, biome = column(seed, x, z)
            for y in range(h + 1):
                if y == 0 or (y < 3 and rand01(seed + 1, x, y, z) < 0.5):
                    col[y] = BEDROCK
                elif y < h - 3:
                    col[y] = _ore(seed, x, y, z)
                elif y < h:
                    col[y] = SAND if biome == DESERT else (GRAVEL if biome == OCEAN and y > h - 2 else DIRT)
                elif biome == OCEAN:
                    col[y] = SAND if rand01(seed + 2, x, 0, z) < 0.6 else GRAVEL
                elif biome == DESERT or h <= SEA_LEVEL + 1:
                    col[y] = SAND
                elif biome == SNOWY:
                    col[y] = SNOW
                else:
                    col[y] = GRASS
            # Under the sea, caves stay deep so no water has to flow into them.
            cave_top = h - 4 if biome == OCEAN else h
            for y in range(3, cave_top + 1):
                if _is_cave(seed, x, y, z):
                    col[y] = LAVA if y <= LAVA_LEVEL else AIR
            for y in range(h + 1, SEA_LEVEL + 1):
                col[y] = WATER
            if biome == DESERT and h > SEA_LEVEL + 1 and col[h] == SAND and rand01(seed + 7, x, 0, z) < 0.006:
                for y in range(h + 1, h + 2 + (hash3(seed + 8, x, 0, z) & 0x7FFFFFFF) % 3):
                    col[y] = CACTUS
            top = max(top, max(h, SEA_LEVEL) + 4)
    # Trees: scan two columns past the edges, since a canopy reaches two blocks sideways.
    for tx in range(x0 - 2, x0 + CHUNK + 2):
        for tz in range(z0 - 2, z0 + CHUNK + 2):
            h, biome = column(seed, tx, tz)
            trunk = _tree_at(seed, tx, tz, h, biome)
            if trunk == 0:
                continue
            crown = h + trunk
            for y in range(crown - 2, crown + 2):
                r = 2 if y < crown else 1
                for dx in range(-r, r + 1):
                    for dz in range(-r, r + 1):
                        x = tx + dx
                        z = tz + dz
                        if x < x0 or x >= x0 + CHUNK or z < z0 or z >= z0 + CHUNK:
                            continue
                        corner = abs(dx) == r and abs(dz) == r
                        if corner and (y == crown + 1 or rand01(seed + 9, x, y, z) < 0.5):
                            continue
                        if region[x & mask, z & mask, y] == AIR:
                            region[x & mask, z & mask, y] = LEAVES
            if x0 <= tx < x0 + CHUNK and z0 <= tz < z0 + CHUNK:
                col = region[tx & mask, tz & mask]
                if col[h] == GRASS or col[h] == SNOW:
                    col[h] = DIRT
                for y in range(h + 1, crown + 1):
                    col[y] = WOOD
            top = max(top, crown + 2)
    return min(top, WORLD_HEIGHT)
