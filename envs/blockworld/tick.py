"""One game tick for a batch of worlds: the step function both envs share.

Order within a tick: hotbar, turning, movement and collision, mining, placing, hazards
(lava, drowning, regeneration), achievements, reward. Everything is deterministic: the
tick draws no random numbers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.blockworld.achievements import ACH_ARG, ACH_KIND, KIND_ID, NUM_ACHIEVEMENTS
from envs.blockworld.blocks import AIR, DROP, HARDNESS, LAVA, PLACEABLE, WATER
from envs.blockworld.jit_cache import CACHE
from envs.blockworld.physics import (
    AIR_TICKS,
    EYE_HEIGHT,
    HALF_WIDTH,
    HEALTH_REWARD,
    HOTBAR_SLOTS,
    LAVA_DAMAGE,
    LAVA_PERIOD,
    MAX_HEALTH,
    MAX_PITCH,
    PLAYER_HEIGHT,
    REGEN_PERIOD,
    STACK_LIMIT,
    TURN_DEGREES,
    USE_COOLDOWN,
    _player_box_hits,
    block_at,
    move_player,
    raycast_target,
)
from envs.blockworld.region import BRICK_SHIFT, mark_filled, raise_peaks
from envs.blockworld.worldgen import CHUNK, WORLD_HEIGHT, column

# Action components, in the order of the MultiDiscrete space.
MOVE, STRAFE, JUMP, YAW, PITCH, ATTACK, USE, HOTBAR = range(8)

_COLLECT = KIND_ID["collect"]
_PLACE = KIND_ID["place"]
_SWIM = KIND_ID["swim"]
_DEPTH = KIND_ID["depth"]
_HEIGHT = KIND_ID["height"]
_TRAVEL = KIND_ID["travel"]
_DAWN = KIND_ID["dawn"]


@njit(cache=CACHE, nogil=True)
def time_of_day(p) -> float:
    """Fraction of the day: 0 sunrise, 0.25 noon, 0.5 sunset, 0.75 midnight."""
    t = p.time0 + p.tick / p.day_length
    return t - np.floor(t)


@njit(cache=CACHE, nogil=True)
def is_night(t: float) -> bool:
    """Between sunset's end and sunrise's start (the sky is dark)."""
    return 0.53 < t < 0.97


@njit(cache=CACHE, nogil=True)
def _has_room(p, item: int) -> bool:
    """Whether :func:`add_item` would find a place for one ``item``."""
    for i in range(HOTBAR_SLOTS):
        if p.inv_count[i] == 0 or (p.inv_id[i] == item and p.inv_count[i] < STACK_LIMIT):
            return True
    return False


@njit(cache=CACHE, nogil=True)
def add_item(p, item: int) -> bool:
    """Put one ``item`` in the hotbar: onto its stack, else the first empty slot."""
    for i in range(HOTBAR_SLOTS):
        if p.inv_count[i] > 0 and p.inv_id[i] == item and p.inv_count[i] < STACK_LIMIT:
            p.inv_count[i] += 1
            return True
    for i in range(HOTBAR_SLOTS):
        if p.inv_count[i] == 0:
            p.inv_id[i] = item
            p.inv_count[i] = 1
            return True
    return False


@njit(cache=CACHE, nogil=True)
def _set_block(world, w: int, x: int, y: int, z: int, b: int) -> None:
    blocks, dirty, top, occ, clear, peaks = world
    m = blocks.shape[1] - 1
    blocks[w, x & m, z & m, y] = b
    dirty[w, (x & m) // CHUNK, (z & m) // CHUNK] = True
    if b != AIR:
        # Mining leaves the brick marked: occupancy only has to over-approximate.
        gx, gz, gy = (x & m) >> BRICK_SHIFT, (z & m) >> BRICK_SHIFT, y >> BRICK_SHIFT
        if not occ[w, gx, gz, gy]:
            occ[w, gx, gz, gy] = 1
            mark_filled(clear[w], gx, gz, gy)
        raise_peaks(peaks[w], x & m, z & m, y)
        top[w] = max(top[w], min(y + 2, WORLD_HEIGHT))


@njit(cache=CACHE, nogil=True)
def _mine(p, world, w: int, attack: int) -> None:
    if not attack or p.target_block == AIR:
        p.mine_ticks = 0
        return
    same = (
        p.mine_ticks > 0
        and p.mine_pos[0] == p.target_pos[0]
        and p.mine_pos[1] == p.target_pos[1]
        and p.mine_pos[2] == p.target_pos[2]
    )
    if not same:
        p.mine_pos[:] = p.target_pos
        p.mine_ticks = 0
    p.mine_ticks += 1
    hardness = HARDNESS[p.target_block]
    item = DROP[p.target_block]
    if hardness > 0 and p.mine_ticks >= hardness and (item == AIR or _has_room(p, item)):
        # With no room in the hotbar for its drop the block holds: mining never destroys an item.
        x, y, z = p.target_pos[0], p.target_pos[1], p.target_pos[2]
        p.mined_block = p.target_block
        _set_block(world, w, x, y, z, AIR)
        if item != AIR and add_item(p, item):
            p.mined = item
        p.mine_ticks = 0
        raycast_target(world[0][w], p)


@njit(cache=CACHE, nogil=True)
def _place(p, world, w: int, use: int) -> None:
    if p.use_cooldown > 0:
        p.use_cooldown -= 1
    if not use or p.use_cooldown > 0 or p.target_block == AIR:
        return
    slot = p.selected
    item = p.inv_id[slot]
    if p.inv_count[slot] <= 0 or not PLACEABLE[item]:
        return
    x = p.target_pos[0] + p.target_normal[0]
    y = p.target_pos[1] + p.target_normal[1]
    z = p.target_pos[2] + p.target_normal[2]
    if y < 0 or y >= WORLD_HEIGHT:
        return
    blocks = world[0]
    here = block_at(blocks[w], x, y, z)
    if here != AIR and here != WATER and here != LAVA:
        return
    # Never inside the player: compare the cell with the player's bounding box.
    px, py, pz = p.pos[0], p.pos[1], p.pos[2]
    if (
        x < px + HALF_WIDTH and x + 1 > px - HALF_WIDTH
        and y < py + PLAYER_HEIGHT and y + 1 > py
        and z < pz + HALF_WIDTH and z + 1 > pz - HALF_WIDTH
    ):  # fmt: skip
        return
    _set_block(world, w, x, y, z, item)
    p.inv_count[slot] -= 1
    p.placed = item
    p.use_cooldown = USE_COOLDOWN
    raycast_target(blocks[w], p)


@njit(cache=CACHE, nogil=True)
def _hazards(p, blocks) -> None:
    """Lava burns, held breath runs out under water, and health slowly regenerates."""
    if p.hurt_timer > 0:
        p.hurt_timer -= 1
    if _player_box_hits(blocks, p.pos, 2) and p.hurt_timer == 0:
        p.health -= LAVA_DAMAGE
        p.hurt_timer = LAVA_PERIOD
    eye = int(np.floor(p.pos[1] + EYE_HEIGHT))
    if block_at(blocks, int(np.floor(p.pos[0])), eye, int(np.floor(p.pos[2]))) == WATER:
        p.air -= 1
        if p.air <= -20:
            p.health -= 2
            p.air = 0
    else:
        p.air = AIR_TICKS
    p.regen_timer += 1
    if p.regen_timer >= REGEN_PERIOD:
        p.regen_timer = 0
        if 0 < p.health < MAX_HEALTH:
            p.health += 1


@njit(cache=CACHE, nogil=True)
def _achievements(p, blocks, head_in_water: bool, dawn: bool) -> int:
    dx = p.pos[0] - p.spawn[0]
    dz = p.pos[2] - p.spawn[2]
    far = np.sqrt(dx * dx + dz * dz)
    new = 0
    for a in range(NUM_ACHIEVEMENTS):
        if p.achieved[a]:
            continue
        kind = ACH_KIND[a]
        arg = ACH_ARG[a]
        hit = (
            (kind == _COLLECT and p.mined == arg)
            or (kind == _PLACE and p.placed != AIR)
            or (kind == _SWIM and head_in_water)
            or (kind == _DEPTH and p.pos[1] < arg)
            or (kind == _HEIGHT and p.on_ground and p.pos[1] >= arg)
            or (kind == _TRAVEL and far >= arg)
            or (kind == _DAWN and dawn)
        )
        if hit:
            p.achieved[a] = 1
            new += 1
    return new


@njit(cache=CACHE, nogil=True)
def step_players(players, blocks, dirty, top, occ, clear, peaks, actions) -> None:
    """Advance every world one tick.

    Args:
        players: PLAYER_DTYPE (B,) record array, updated in place; ``reward``, ``mined``,
            ``placed`` and ``dead`` hold this tick's results afterwards.
        blocks: uint8 (B, R, R, WORLD_HEIGHT) loaded regions, edited in place.
        dirty: bool (B, R/16, R/16) chunk edit flags, set where blocks change.
        top: int32 (B,) sky limits, raised where blocks are placed.
        occ: uint8 (B, R/4, R/4, WORLD_HEIGHT/4) brick occupancy, set where blocks are placed.
        clear: uint8, same shape, brick clearance, lowered around placed blocks.
        peaks: uint8 (B, PEAK_LEVELS, R/2, R/2) column peak map, raised where blocks are placed.
        actions: int64 (B, 8), already validated against the action space.
    """
    world = (blocks, dirty, top, occ, clear, peaks)
    for w in range(players.shape[0]):
        p = players[w]
        a = actions[w]
        health_before = p.health
        p.mined = AIR
        p.mined_block = AIR
        p.placed = AIR
        if a[HOTBAR] > 0:
            p.selected = a[HOTBAR] - 1
        if a[YAW] == 1:
            p.yaw -= TURN_DEGREES
        elif a[YAW] == 2:
            p.yaw += TURN_DEGREES
        p.yaw = p.yaw - 360.0 * np.floor(p.yaw / 360.0)
        if a[PITCH] == 1:
            p.pitch = min(p.pitch + TURN_DEGREES, MAX_PITCH)
        elif a[PITCH] == 2:
            p.pitch = max(p.pitch - TURN_DEGREES, -MAX_PITCH)
        move_player(p, blocks[w], a[MOVE], a[STRAFE], a[JUMP])
        raycast_target(blocks[w], p)
        _mine(p, world, w, a[ATTACK])
        if p.mined_block == AIR:
            _place(p, world, w, a[USE])
        _hazards(p, blocks[w])
        p.tick += 1
        t = time_of_day(p)
        dawn = False
        if is_night(t):
            p.was_night = 1
        elif p.was_night and t < 0.25:
            p.was_night = 0
            dawn = True
        eye = int(np.floor(p.pos[1] + EYE_HEIGHT))
        head_in_water = block_at(blocks[w], int(np.floor(p.pos[0])), eye, int(np.floor(p.pos[2]))) == WATER
        p.biome = column(p.world_seed, int(np.floor(p.pos[0])), int(np.floor(p.pos[2])))[1]
        p.health = max(p.health, 0)
        new = _achievements(p, blocks[w], head_in_water, dawn)
        p.reward = new + HEALTH_REWARD * (p.health - health_before)
        p.dead = p.health <= 0


@njit(cache=CACHE, nogil=True)
def refresh_targets(players, blocks) -> None:
    """Recompute what each player looks at (after a reset or a scripted move)."""
    for w in range(players.shape[0]):
        raycast_target(blocks[w], players[w])
