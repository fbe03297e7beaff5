"""The seeds of a vector env's ``reset(seed=...)``: read as Gymnasium reads them, checked first.

Both native vector envs (BlockWorld's and the dream's) give world ``i`` its own generator, as
``num_envs`` single envs would each have their ``np_random``, so they read a reset's seed the
same way, here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.utils import seeding

from worldsim.errors import SettingError


def world_seeds(seed: Any, num_envs: int) -> list[int | None]:
    """The seed of each of ``num_envs`` worlds for ``reset(seed=seed)``.

    An integer ``s`` seeds world ``i`` with ``s + i``, as Gymnasium's vector envs do; a
    sequence of ``num_envs`` integers and Nones seeds each world (None: that world keeps
    drawing from its generator); None seeds none. numpy integers are integers, as a seed
    drawn with ``np.random`` is one.

    Raises:
        SettingError: Naming the seed. A float, a bool or a string is not quietly read as
            another seed (``True`` as 1, ``"12"`` as two seeds), and the check comes before
            any world is reset, so a bad seed leaves every world as it was.
    """

    def one(s: Any) -> int:
        if not isinstance(s, (int, np.integer)) or isinstance(s, (bool, np.bool_)) or s < 0:
            raise SettingError(f"reset seed must be a non-negative integer, a list of {num_envs} of them "
                               f"(None for a world to draw its own) or None, got {seed!r}")  # fmt: skip
        return int(s)

    if seed is None:
        return [None] * num_envs
    if isinstance(seed, np.ndarray) and seed.ndim == 0:  # np.array(5): a scalar that has __len__ but cannot be iterated
        seed = seed[()]
    if isinstance(seed, (int, np.integer, bool, np.bool_)):
        first = one(seed)
        return [first + i for i in range(num_envs)]
    if isinstance(seed, (str, bytes)) or not hasattr(seed, "__len__"):
        one(seed)  # raises: neither an integer nor a sequence of seeds
    seeds = list(seed)
    if len(seeds) != num_envs:
        raise SettingError(f"reset got {len(seeds)} seeds for {num_envs} envs")
    return [None if s is None else one(s) for s in seeds]


def reseed(rngs: list[np.random.Generator | None], seeds: list[int | None]) -> None:
    """Give world ``i`` a generator seeded with ``seeds[i]``, as ``Env.reset(seed=s)`` does;
    a world without a seed keeps its generator, or gets an unseeded one if it has none yet."""
    for w, s in enumerate(seeds):
        if s is not None or rngs[w] is None:
            rngs[w], _ = seeding.np_random(s)
