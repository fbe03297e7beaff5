"""The player: one game tick of movement, collision, health, mining, placing and rewards.

``step_players`` advances every world of a batch by one tick. The single env calls it with
a batch of one and the vector env with N, so both run exactly the same code.

All rates are per tick at 20 ticks/s and follow Minecraft's: walking 4.3 blocks/s, gravity
0.08 blocks/tick^2 with 2 % air drag per tick, a jump of about 1.25 blocks, turning and
looking 5 degrees per tick. Player state lives in a numpy record array (``PLAYER_DTYPE``)
so that the kernel, the envs and tests all read the same named fields.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.blockworld.achievements import NUM_ACHIEVEMENTS
from envs.blockworld.blocks import AIR, BEDROCK, HARDNESS, LAVA, SOLID, WATER
from envs.blockworld.jit_cache import CACHE
from envs.blockworld.worldgen import WORLD_HEIGHT

HOTBAR_SLOTS = 9
STACK_LIMIT = 64
MAX_HEALTH = 20

WALK_SPEED = 4.317 / 20.0
"""Blocks per tick on foot (Minecraft's 4.317 blocks/s)."""
SWIM_FACTOR = 0.5
"""Horizontal speed multiplier in water or lava."""
GRAVITY = 0.08
AIR_DRAG = 0.98
JUMP_VELOCITY = 0.42
FLUID_GRAVITY = 0.02
FLUID_DRAG = 0.8
SWIM_UP = 0.04
TURN_DEGREES = 5.0
"""Yaw or pitch change per tick while a turn/look action is held."""
MAX_PITCH = 85.0

HALF_WIDTH = 0.3
PLAYER_HEIGHT = 1.8
EYE_HEIGHT = 1.62
REACH = 4.5
"""Blocks from the eye within which a block can be mined or built against."""
USE_COOLDOWN = 4
"""Ticks between two placements while use is held (Minecraft's right-click repeat)."""
SAFE_FALL = 3.0
"""Falls up to this many blocks do no damage; each block further costs 1 health."""
LAVA_DAMAGE = 4
LAVA_PERIOD = 10
REGEN_PERIOD = 80
AIR_TICKS = 300
"""Ticks of breath under water before drowning damage (2 every 20 ticks) starts."""
HEALTH_REWARD = 0.1
"""Reward per health point gained (and penalty per point lost)."""
_EPS = 1e-6

PLAYER_DTYPE = np.dtype(
    [
        ("pos", np.float64, (3,)),  # feet centre, world coordinates
        ("vel", np.float64, (3,)),  # blocks per tick
        ("yaw", np.float64),  # degrees in [0, 360); 0 looks along +z, 90 along +x
        ("pitch", np.float64),  # degrees, positive looks up
        ("on_ground", np.int8),
        ("in_fluid", np.int8),
        ("fall_peak", np.float64),
        ("health", np.int32),
        ("air", np.int32),
        ("regen_timer", np.int32),
        ("hurt_timer", np.int32),
        ("use_cooldown", np.int32),
        ("mine_pos", np.int64, (3,)),
        ("mine_ticks", np.int32),
        ("target_block", np.int32),  # AIR when nothing is within reach
        ("target_pos", np.int64, (3,)),
        ("target_normal", np.int64, (3,)),  # outward normal of the face looked at
        ("target_dist", np.float64),
        ("inv_id", np.int32, (HOTBAR_SLOTS,)),
        ("inv_count", np.int32, (HOTBAR_SLOTS,)),
        ("selected", np.int32),
        ("tick", np.int64),
        ("time0", np.float64),  # time of day at tick 0, in [0, 1)
        ("day_length", np.float64),  # ticks per day
        ("was_night", np.int8),
        ("spawn", np.float64, (3,)),
        ("biome", np.int32),
        ("achieved", np.int8, (NUM_ACHIEVEMENTS,)),
        ("mined", np.int32),  # item this tick's mining added, AIR if none
        ("mined_block", np.int32),  # block broken this tick, AIR if none
        ("placed", np.int32),  # block placed this tick, AIR if none
        ("reward", np.float32),
        ("dead", np.int8),
        ("world_seed", np.int64),
    ]
)


@njit(cache=CACHE, nogil=True)
def block_at(blocks, x: int, y: int, z: int) -> int:
    """Block at world cell (x, y, z) of one world's region; bedrock below, air above."""
    if y < 0:
        return BEDROCK
    if y >= WORLD_HEIGHT:
        return AIR
    m = blocks.shape[0] - 1
    return blocks[x & m, z & m, y]


@njit(cache=CACHE, nogil=True)
def _box_hits(blocks, lo0, lo1, lo2, hi0, hi1, hi2, kind: int) -> bool:
    """Whether the box [lo, hi) overlaps a solid block (kind 0), water (1) or lava (2)."""
    for x in range(int(np.floor(lo0)), int(np.floor(hi0 - 1e-9)) + 1):
        for y in range(int(np.floor(lo1)), int(np.floor(hi1 - 1e-9)) + 1):
            for z in range(int(np.floor(lo2)), int(np.floor(hi2 - 1e-9)) + 1):
                b = block_at(blocks, x, y, z)
                if kind == 0 and SOLID[b]:
                    return True
                if kind == 1 and b == WATER:
                    return True
                if kind == 2 and b == LAVA:
                    return True
    return False


@njit(cache=CACHE, nogil=True)
def _player_box_hits(blocks, pos, kind: int) -> bool:
    return _box_hits(
        blocks,
        pos[0] - HALF_WIDTH, pos[1], pos[2] - HALF_WIDTH,
        pos[0] + HALF_WIDTH, pos[1] + PLAYER_HEIGHT, pos[2] + HALF_WIDTH,
        kind,
    )  # fmt: skip


@njit(cache=CACHE, nogil=True)
def player_in_water(blocks, pos) -> bool:
    """Whether a player at ``pos`` touches water (not lava)."""
    return _player_box_hits(blocks, pos, 1)


@njit(cache=CACHE, nogil=True)
def _move_axis(blocks, pos, axis: int, delta: float) -> bool:
    """Move ``pos`` along one axis, stopping flush against solid blocks; True if stopped.

    Moves in sub-steps under half a block so that a fast fall cannot tunnel through a
    floor; the player never starts a sub-step inside a block, so a new overlap can only
    come from the layer of cells the leading face just entered.
    """
    lo = 0.0 if axis == 1 else -HALF_WIDTH
    hi = PLAYER_HEIGHT if axis == 1 else HALF_WIDTH
    n = int(np.ceil(abs(delta) / 0.45))
    for _ in range(n):
        step = delta / n
        old = pos[axis]
        pos[axis] = old + step
        if _player_box_hits(blocks, pos, 0):
            if step > 0:
                pos[axis] = np.floor(old + step + hi) - hi - _EPS
            else:
                pos[axis] = np.floor(old + step + lo) + 1.0 - lo + _EPS
            if _player_box_hits(blocks, pos, 0):  # squeezed in by float error: stay put
                pos[axis] = old
            return True
    return False


@njit(cache=CACHE, nogil=True)
def look_vector(yaw: float, pitch: float):
    """Unit view direction for yaw/pitch in degrees."""
    y = np.radians(yaw)
    p = np.radians(pitch)
    return np.cos(p) * np.sin(y), np.sin(p), np.cos(p) * np.cos(y)


@njit(cache=CACHE, nogil=True)
def raycast_target(blocks, p) -> None:
    """Find the first minable block within reach along the view; fills ``p.target_*``."""
    ox = p.pos[0]
    oy = p.pos[1] + EYE_HEIGHT
    oz = p.pos[2]
    dx, dy, dz = look_vector(p.yaw, p.pitch)
    ix, iy, iz = int(np.floor(ox)), int(np.floor(oy)), int(np.floor(oz))
    sx = 1 if dx > 0 else -1
    sy = 1 if dy > 0 else -1
    sz = 1 if dz > 0 else -1
    tdx = abs(1.0 / dx) if dx != 0 else 1e30
    tdy = abs(1.0 / dy) if dy != 0 else 1e30
    tdz = abs(1.0 / dz) if dz != 0 else 1e30
    tx = ((ix + 1 - ox) if dx > 0 else (ox - ix)) * tdx
    ty = ((iy + 1 - oy) if dy > 0 else (oy - iy)) * tdy
    tz = ((iz + 1 - oz) if dz > 0 else (oz - iz)) * tdz
    p.target_block = AIR
    p.target_dist = -1.0
    while True:
        if tx < ty and tx < tz:
            ix += sx
            t = tx
            tx += tdx
            n0, n1, n2 = -sx, 0, 0
        elif ty < tz:
            iy += sy
            t = ty
            ty += tdy
            n0, n1, n2 = 0, -sy, 0
        else:
            iz += sz
            t = tz
            tz += tdz
            n0, n1, n2 = 0, 0, -sz
        if t > REACH or iy < -1 or (iy >= WORLD_HEIGHT and sy >= 0):  # above the world, only a ray going down finds blocks
            return
        b = block_at(blocks, ix, iy, iz)
        if HARDNESS[b] != 0:
            p.target_block = b
            p.target_pos[0], p.target_pos[1], p.target_pos[2] = ix, iy, iz
            p.target_normal[0], p.target_normal[1], p.target_normal[2] = n0, n1, n2
            p.target_dist = t
            return


@njit(cache=CACHE, nogil=True)
def move_player(p, blocks, move: int, strafe: int, jump: int) -> None:
    """Walk, swim, fall and collide; updates on_ground, in_fluid and fall damage."""
    fx, _, fz = look_vector(p.yaw, 0.0)
    fwd = 1.0 if move == 1 else (-1.0 if move == 2 else 0.0)
    side = -1.0 if strafe == 1 else (1.0 if strafe == 2 else 0.0)
    # right = (cos yaw, 0, -sin yaw) = (fz, 0, -fx)
    wx = fwd * fx + side * fz
    wz = fwd * fz - side * fx
    norm = np.sqrt(wx * wx + wz * wz)
    speed = WALK_SPEED * (SWIM_FACTOR if p.in_fluid else 1.0)
    if norm > 0:
        wx *= speed / norm
        wz *= speed / norm
    p.vel[0] = wx
    p.vel[2] = wz
    if p.in_fluid:
        p.vel[1] = (p.vel[1] - FLUID_GRAVITY) * FLUID_DRAG + (SWIM_UP if jump else 0.0)
    else:
        if jump and p.on_ground:
            p.vel[1] = JUMP_VELOCITY
    was_airborne = not p.on_ground
    hit_y = _move_axis(blocks, p.pos, 1, p.vel[1])
    landed = hit_y and p.vel[1] < 0
    if hit_y:
        p.vel[1] = 0.0
    _move_axis(blocks, p.pos, 0, p.vel[0])
    _move_axis(blocks, p.pos, 2, p.vel[2])
    if not p.in_fluid:
        p.vel[1] = (p.vel[1] - GRAVITY) * AIR_DRAG
    # Gravity pulls a standing player into the floor every tick, so standing means landing.
    p.on_ground = landed
    p.in_fluid = _player_box_hits(blocks, p.pos, 1) or _player_box_hits(blocks, p.pos, 2)
    if p.in_fluid:
        p.fall_peak = p.pos[1]
    elif p.on_ground:
        if was_airborne:
            fall = p.fall_peak - p.pos[1]
            if fall > SAFE_FALL:
                p.health -= int(np.ceil(fall - SAFE_FALL))
        p.fall_peak = p.pos[1]
    else:
        p.fall_peak = max(p.fall_peak, p.pos[1])
