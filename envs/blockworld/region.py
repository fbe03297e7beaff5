"""The loaded part of each world: a ring buffer of chunks that follows the player.

Each world keeps ``REGION_CHUNKS x REGION_CHUNKS`` chunk columns in one uint8 array,
indexed by world coordinates modulo ``REGION`` (a power of two, so the kernels use
``x & (REGION - 1)``). When the player enters another chunk, the columns that fell out of
range are evicted and the new ones generated in their slots. A chunk the player edited
(mined or placed in) is copied aside before eviction and restored when it comes back, so
edits persist however far the player walks.

Limits: edited chunks are kept in memory (16 KiB each) for the whole episode, and world
coordinates are 64-bit, so the walkable world is effectively unbounded.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.blockworld.blocks import GRASS, SAND, SNOW
from envs.blockworld.jit_cache import CACHE
from envs.blockworld.worldgen import (
    CHUNK,
    OCEAN,
    SEA_LEVEL,
    WORLD_HEIGHT,
    column,
    generate_chunk,
)

REGION_CHUNKS = 8
"""Chunks per side of the loaded square."""
REGION = REGION_CHUNKS * CHUNK
"""Blocks per side of the loaded square (128)."""
REGION_HALF = REGION_CHUNKS // 2
MAX_VIEW_DISTANCE = 40
"""Furthest a ray may travel. The square recentres when the player comes within this
distance (+1) of its edge, which leaves room for hysteresis up to this view distance:
a player pacing across a chunk border does not reload chunks every few steps."""
_OPEN_GROUND = (GRASS, SAND, SNOW)
BRICK_SHIFT = 2
"""Occupancy bricks are 4x4x4 blocks (1 << BRICK_SHIFT)."""
CLEAR_CAP = 8
"""Largest brick clearance stored (32 blocks: a ray leaps at most that far at once)."""
PEAK_LEVELS = 3
"""Levels of the column peak map: tiles of 2x2, 4x4, ... up to 2**PEAK_LEVELS columns
(at most a chunk, so that loading a chunk rebuilds whole tiles). Three measured fastest:
a fourth, coarser level did not cut the ray's iterations (its higher floor ends leaps
early) and two levels added some."""
assert 1 << PEAK_LEVELS <= CHUNK


@njit(cache=CACHE, nogil=True)
def fill_occupancy(blocks, occ, x0: int, z0: int) -> None:
    """Recompute the brick occupancy of the chunk whose corner is world (x0, z0).

    Args:
        blocks: uint8 (R, R, WORLD_HEIGHT) one world's region.
        occ: uint8 (R/4, R/4, WORLD_HEIGHT/4) that world's bricks; 1 where any block is
            not air. Kept conservative: a brick may say 1 after its blocks were mined.
        x0: World x of the chunk's corner (a multiple of 16).
        z0: World z of the chunk's corner.
    """
    m = blocks.shape[0] - 1
    mb = occ.shape[0] - 1
    for bx in range(CHUNK >> BRICK_SHIFT):
        for bz in range(CHUNK >> BRICK_SHIFT):
            gx = ((x0 >> BRICK_SHIFT) + bx) & mb
            gz = ((z0 >> BRICK_SHIFT) + bz) & mb
            for by in range(occ.shape[2]):
                full = 0
                for dx in range(1 << BRICK_SHIFT):
                    for dz in range(1 << BRICK_SHIFT):
                        x = (x0 + (bx << BRICK_SHIFT) + dx) & m
                        z = (z0 + (bz << BRICK_SHIFT) + dz) & m
                        for dy in range(1 << BRICK_SHIFT):
                            if blocks[x, z, (by << BRICK_SHIFT) + dy] != 0:
                                full = 1
                occ[gx, gz, by] = full


@njit(cache=CACHE, nogil=True)
def compute_clearance(occ, clear) -> None:
    """Chebyshev distance, in bricks, from each brick to the nearest non-empty one.

    ``clear[b] = d`` means every brick within ``d - 1`` bricks of ``b`` (a cube) is empty,
    so a ray can cross that whole cube in one leap. Capped at ``CLEAR_CAP``. The x and z
    axes wrap like the ring buffer, which only ever underestimates the distance. Computed
    by dilating the occupancy one brick per round (three separable 1-D passes).
    """
    nx, nz, ny = occ.shape
    cur = occ.copy()
    tmp = np.empty_like(occ)
    for x in range(nx):
        for z in range(nz):
            for y in range(ny):
                clear[x, z, y] = 0 if occ[x, z, y] else CLEAR_CAP
    for r in range(1, CLEAR_CAP):
        for x in range(nx):
            for z in range(nz):
                for y in range(ny):
                    tmp[x, z, y] = cur[(x - 1) % nx, z, y] | cur[x, z, y] | cur[(x + 1) % nx, z, y]
        for x in range(nx):
            for z in range(nz):
                for y in range(ny):
                    cur[x, z, y] = tmp[x, (z - 1) % nz, y] | tmp[x, z, y] | tmp[x, (z + 1) % nz, y]
        for x in range(nx):
            for z in range(nz):
                for y in range(ny):
                    v = cur[x, z, y]
                    if y > 0:
                        v |= cur[x, z, y - 1]
                    if y < ny - 1:
                        v |= cur[x, z, y + 1]
                    tmp[x, z, y] = v
        cur[:] = tmp
        for x in range(nx):
            for z in range(nz):
                for y in range(ny):
                    if cur[x, z, y] and clear[x, z, y] > r:
                        clear[x, z, y] = r


@njit(cache=CACHE, nogil=True)
def mark_filled(clear, gx: int, gz: int, gy: int) -> None:
    """Update ``clear`` after brick (gx, gz, gy) (ring-buffer indices) gained a block."""
    nx, nz, ny = clear.shape
    for dx in range(-(CLEAR_CAP - 1), CLEAR_CAP):
        for dz in range(-(CLEAR_CAP - 1), CLEAR_CAP):
            for y in range(max(gy - CLEAR_CAP + 1, 0), min(gy + CLEAR_CAP, ny)):
                d = max(abs(dx), abs(dz), abs(y - gy))
                x = (gx + dx) % nx
                z = (gz + dz) % nz
                if clear[x, z, y] > d:
                    clear[x, z, y] = d


@njit(cache=CACHE, nogil=True)
def fill_peaks(blocks, peaks, x0: int, z0: int) -> None:
    """Recompute the column peaks of the chunk whose corner is world (x0, z0).

    Args:
        blocks: uint8 (R, R, WORLD_HEIGHT) one world's region.
        peaks: uint8 (PEAK_LEVELS, R/2, R/2) that world's peak map: ``peaks[l, i, k]`` is
            1 + the highest non-air y over the tile of 2**(l+1) x 2**(l+1) columns at ring
            tile index (i, k) (0 for all-air columns); level l uses the first R >> (l+1)
            rows and columns. Kept conservative like ``occ``: raised when a block is placed,
            never lowered when one is mined. Every cell of a tile at or above its peak is
            air, so a ray there can leap out of the tile's air box in one go.
        x0: World x of the chunk's corner (a multiple of 16).
        z0: World z of the chunk's corner.
    """
    m = blocks.shape[0] - 1
    cx, cz = x0 & m, z0 & m
    for lv in range(peaks.shape[0]):
        s = lv + 1
        for i in range(cx >> s, (cx + CHUNK) >> s):
            for k in range(cz >> s, (cz + CHUNK) >> s):
                peaks[lv, i, k] = 0
    for x in range(cx, cx + CHUNK):
        for z in range(cz, cz + CHUNK):
            h = blocks.shape[2]
            while h > 0 and blocks[x, z, h - 1] == 0:
                h -= 1
            for lv in range(peaks.shape[0]):
                s = lv + 1
                if peaks[lv, x >> s, z >> s] < h:
                    peaks[lv, x >> s, z >> s] = h


@njit(cache=CACHE, nogil=True)
def raise_peaks(peaks, x: int, z: int, y: int) -> None:
    """Update ``peaks`` after a non-air block was put at ring indices (x, z), height y."""
    for lv in range(peaks.shape[0]):
        s = lv + 1
        if peaks[lv, x >> s, z >> s] <= y:
            peaks[lv, x >> s, z >> s] = y + 1


@njit(cache=CACHE, nogil=True)
def _near_edge(pos, center, margin: float):
    """Indices of worlds whose player is within ``margin`` of its square's edge.

    A kernel rather than numpy: the five temporaries numpy needed cost 20 us per step,
    as much as the whole tick of a world.
    """
    out = np.empty(pos.shape[0], dtype=np.int64)
    n = 0
    for w in range(pos.shape[0]):
        for axis, col in ((0, 0), (1, 2)):
            lo = (center[w, axis] - REGION_HALF) * CHUNK
            x = pos[w, col]
            if x - lo <= margin or lo + REGION - x <= margin:
                out[n] = w
                n += 1
                break
    return out[:n]


class Regions:
    """Loaded blocks of ``num_worlds`` worlds, plus the bookkeeping to stream chunks.

    Attributes:
        blocks: uint8 (num_worlds, REGION, REGION, WORLD_HEIGHT), ``[w, x & m, z & m, y]``.
        dirty: bool (num_worlds, REGION_CHUNKS, REGION_CHUNKS): slot edited since loaded.
        top: int32 (num_worlds,): y above which every loaded column is air (rays skip it).
        occ: uint8 (num_worlds, REGION/4, REGION/4, WORLD_HEIGHT/4): non-empty 4^3 bricks.
        clear: uint8, same shape: each brick's clearance (see ``compute_clearance``).
        peaks: uint8 (num_worlds, PEAK_LEVELS, REGION/2, REGION/2): highest terrain per
            tile of columns (see ``fill_peaks``).
    """

    def __init__(self, num_worlds: int) -> None:
        self.blocks = np.zeros((num_worlds, REGION, REGION, WORLD_HEIGHT), dtype=np.uint8)
        self.dirty = np.zeros((num_worlds, REGION_CHUNKS, REGION_CHUNKS), dtype=np.bool_)
        self.top = np.zeros(num_worlds, dtype=np.int32)
        nb = REGION >> BRICK_SHIFT
        self.occ = np.zeros((num_worlds, nb, nb, WORLD_HEIGHT >> BRICK_SHIFT), dtype=np.uint8)
        self.clear = np.zeros_like(self.occ)
        self.peaks = np.zeros((num_worlds, PEAK_LEVELS, REGION // 2, REGION // 2), dtype=np.uint8)
        self._slot_key = np.full((num_worlds, REGION_CHUNKS, REGION_CHUNKS, 2), 2**62, dtype=np.int64)
        self._slot_top = np.zeros((num_worlds, REGION_CHUNKS, REGION_CHUNKS), dtype=np.int32)
        self._center = np.zeros((num_worlds, 2), dtype=np.int64)
        self._seed = np.zeros(num_worlds, dtype=np.int64)
        self._saved: list[dict[tuple[int, int], tuple[np.ndarray, int]]] = [{} for _ in range(num_worlds)]

    def reset_world(self, w: int, seed: int, x: float, z: float) -> None:
        """Forget world ``w``'s edits and generate its chunks around (x, z)."""
        self._seed[w] = seed
        self._saved[w] = {}
        self._slot_key[w] = 2**62
        self.dirty[w] = False
        self.top[w] = 0
        self._load_around(w, int(np.floor(x)) // CHUNK, int(np.floor(z)) // CHUNK)

    def follow(self, w: int, x: float, z: float) -> None:
        """Recentre world ``w``'s loaded square on the chunk of (x, z)."""
        cx = int(np.floor(x)) // CHUNK
        cz = int(np.floor(z)) // CHUNK
        if cx != self._center[w, 0] or cz != self._center[w, 1]:
            self._load_around(w, cx, cz)

    def near_edge(self, pos: np.ndarray, margin: float) -> np.ndarray:
        """Indices of worlds whose player (pos: float (num_worlds, 3), feet x, y, z) is
        within ``margin`` blocks of the loaded square's edge, and so must be recentred."""
        return _near_edge(pos, self._center, float(margin))

    def _load_around(self, w: int, cx: int, cz: int) -> None:
        self._center[w] = (cx, cz)
        seed = int(self._seed[w])
        for kx in range(cx - REGION_HALF, cx + REGION_HALF):
            for kz in range(cz - REGION_HALF, cz + REGION_HALF):
                sx, sz = kx % REGION_CHUNKS, kz % REGION_CHUNKS
                old = (int(self._slot_key[w, sx, sz, 0]), int(self._slot_key[w, sx, sz, 1]))
                if old == (kx, kz):
                    continue
                view = self.blocks[w, sx * CHUNK : (sx + 1) * CHUNK, sz * CHUNK : (sz + 1) * CHUNK]
                if self.dirty[w, sx, sz]:
                    filled = np.flatnonzero(view.any(axis=(0, 1)))
                    self._saved[w][old] = (view.copy(), int(filled[-1]) + 1 if filled.size else 0)
                saved = self._saved[w].get((kx, kz))
                if saved is not None:
                    view[...] = saved[0]
                    self._slot_top[w, sx, sz] = saved[1]
                    # Still differs from the generated chunk, so it must be saved again.
                    self.dirty[w, sx, sz] = True
                else:
                    self._slot_top[w, sx, sz] = generate_chunk(seed, kx, kz, self.blocks[w])
                    self.dirty[w, sx, sz] = False
                self._slot_key[w, sx, sz] = (kx, kz)
                fill_occupancy(self.blocks[w], self.occ[w], kx * CHUNK, kz * CHUNK)
                fill_peaks(self.blocks[w], self.peaks[w], kx * CHUNK, kz * CHUNK)
        compute_clearance(self.occ[w], self.clear[w])
        # Never lowered here: the kernel raises ``top`` when it places blocks, and an upper
        # bound is all the renderer needs.
        self.top[w] = max(int(self.top[w]), int(self._slot_top[w].max()))

    def refresh(self, w: int) -> None:
        """Rebuild world ``w``'s bookkeeping after its ``blocks`` were edited directly.

        Marks every loaded chunk as edited (so the edits persist) and recomputes the
        bricks, clearance, peaks and sky limit. For building test scenes, not for stepping.
        """
        self.dirty[w] = True
        for sx in range(REGION_CHUNKS):
            for sz in range(REGION_CHUNKS):
                fill_occupancy(self.blocks[w], self.occ[w], sx * CHUNK, sz * CHUNK)
                fill_peaks(self.blocks[w], self.peaks[w], sx * CHUNK, sz * CHUNK)
        compute_clearance(self.occ[w], self.clear[w])
        filled = np.flatnonzero(self.blocks[w].any(axis=(0, 1)))
        self.top[w] = min(int(filled[-1]) + 2, WORLD_HEIGHT) if filled.size else 0
        self._slot_top[w] = self.top[w]

    def open_ground(self, w: int, x: float, z: float, radius: int = 24) -> tuple[float, float, int]:
        """The open spot nearest (x, z): a column whose top is terrain (not a tree) with
        air above it and its eight neighbours for three blocks, so a player placed there
        sees the world rather than the inside of a canopy. Returns (x, z, ground y)."""
        x0, z0 = int(np.floor(x)), int(np.floor(z))
        offsets = sorted(
            ((dx, dz) for dx in range(-radius, radius + 1) for dz in range(-radius, radius + 1)),
            key=lambda o: (o[0] * o[0] + o[1] * o[1], o),
        )
        blocks = self.blocks[w]
        for dx, dz in offsets:
            cx, cz = (x0 + dx) % REGION, (z0 + dz) % REGION
            col = blocks[cx, cz]
            filled = np.flatnonzero(col)
            if not filled.size:
                continue
            ground = int(filled[-1])
            if col[ground] not in _OPEN_GROUND or ground + 4 >= WORLD_HEIGHT:
                continue
            xs = [(cx + i) % REGION for i in (-1, 0, 1)]
            zs = [(cz + i) % REGION for i in (-1, 0, 1)]
            if not blocks[np.ix_(xs, zs, range(ground + 1, ground + 4))].any():
                return x0 + dx + 0.5, z0 + dz + 0.5, ground
        filled = np.flatnonzero(blocks[x0 % REGION, z0 % REGION])
        return x + 0.0, z + 0.0, int(filled[-1]) if filled.size else 0

    def set_block(self, w: int, x: int, y: int, z: int, block: int) -> None:
        """Set one loaded block of world ``w`` by world coordinates (for building scenes)."""
        if not 0 <= y < WORLD_HEIGHT:
            raise ValueError(f"y must be in [0, {WORLD_HEIGHT}), got {y}")
        self.blocks[w, x % REGION, z % REGION, y] = block
        if block != 0:
            g = ((x % REGION) >> BRICK_SHIFT, (z % REGION) >> BRICK_SHIFT, y >> BRICK_SHIFT)
            self.occ[w][g] = 1
            mark_filled(self.clear[w], *g)
            raise_peaks(self.peaks[w], x % REGION, z % REGION, y)
        self.dirty[w, (x % REGION) // CHUNK, (z % REGION) // CHUNK] = True
        self.top[w] = max(int(self.top[w]), min(y + 2, WORLD_HEIGHT))

    def get_block(self, w: int, x: int, y: int, z: int) -> int:
        """The loaded block of world ``w`` at world coordinates (air above the sky limit)."""
        if y >= WORLD_HEIGHT:
            return 0
        return int(self.blocks[w, x % REGION, z % REGION, max(y, 0)])


def find_spawn(seed: int) -> tuple[float, float]:
    """The centre of the nearest dry column to the origin, searched in a square spiral."""
    for radius in range(0, 512, 4):
        for dx in range(-radius, radius + 1, 4):
            for dz in (-radius, radius) if abs(dx) != radius else range(-radius, radius + 1, 4):
                h, biome = column(seed, dx, dz)
                if biome != OCEAN and h > SEA_LEVEL:
                    return dx + 0.5, dz + 0.5
    return 0.5, 0.5
