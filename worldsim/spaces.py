"""Action spaces as plain data, shared by recordings, the model and the runtime.

The core knows two kinds of action space, ``Discrete(n)`` and ``MultiDiscrete(nvec)``. Both
are stored as an :class:`ActionSpec`, whose canonical array form of one action is an int64
vector with one entry per component (a ``Discrete`` action is a vector of length 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.errors import WorldSimError


def native_action(space: gym.Space, actions: Any) -> Any:
    """Canonical int64 actions ``[..., C]`` in the form an env with action space ``space`` takes.

    ``Discrete``: an int (with a leading batch axis, an array of ints). ``MultiDiscrete``: an
    array of the space's own dtype, because ``space.contains``, which envs may assert, refuses
    int64 actions for an int32 space.
    """
    arr = np.asarray(actions)
    if isinstance(space, gym.spaces.Discrete):
        return int(arr.reshape(-1)[0]) if arr.ndim <= 1 else arr[..., 0]
    return arr.astype(space.dtype, copy=False)


@dataclass(frozen=True)
class ActionSpec:
    """A ``Discrete`` or ``MultiDiscrete`` action space, in a form JSON and msgpack can hold."""

    kind: str
    """``"Discrete"`` or ``"MultiDiscrete"``."""
    nvec: tuple[int, ...]
    """Number of choices per component; ``(n,)`` for ``Discrete(n)``."""

    def __post_init__(self) -> None:
        if self.kind not in ("Discrete", "MultiDiscrete"):
            raise WorldSimError(f"action space type must be Discrete or MultiDiscrete, got {self.kind!r}")
        if not self.nvec or any(not 1 <= int(n) < 2**63 for n in self.nvec):  # actions are int64 arrays
            raise WorldSimError(f"action space sizes must be positive integers below 2**63, got {self.nvec!r}")
        if self.kind == "Discrete" and len(self.nvec) != 1:
            raise WorldSimError(f"a Discrete space has one size, got {self.nvec!r}")

    @property
    def num_components(self) -> int:
        return len(self.nvec)

    @classmethod
    def from_space(cls, space: gym.Space) -> ActionSpec:
        """The spec of a Gymnasium space; other space types raise :class:`WorldSimError`."""
        if isinstance(space, gym.spaces.Discrete):
            if int(space.start) != 0:
                raise WorldSimError(f"Discrete spaces must start at 0, got start={space.start}")
            return cls("Discrete", (int(space.n),))
        if isinstance(space, gym.spaces.MultiDiscrete):
            if space.nvec.ndim != 1 or np.any(space.start != 0):
                raise WorldSimError("MultiDiscrete spaces must be 1-D and start at 0")
            return cls("MultiDiscrete", tuple(int(n) for n in space.nvec))
        raise WorldSimError(
            f"action space must be Discrete or MultiDiscrete, got {type(space).__name__}"
        )

    @classmethod
    def from_dict(cls, d: Any) -> ActionSpec:
        """Parse the recording/checkpoint form ``{"type": ..., "n"|"nvec": ...}``."""
        if not isinstance(d, dict) or "type" not in d:
            raise WorldSimError(f"action space must be a map with a 'type', got {d!r}")
        if d["type"] == "Discrete":
            n = d.get("n")
            if not isinstance(n, int) or isinstance(n, bool):
                raise WorldSimError(f"Discrete action space needs an integer 'n', got {n!r}")
            return cls("Discrete", (n,))
        if d["type"] == "MultiDiscrete":
            nvec = d.get("nvec")
            if not isinstance(nvec, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in nvec
            ):
                raise WorldSimError(f"MultiDiscrete action space needs a list 'nvec', got {nvec!r}")
            return cls("MultiDiscrete", tuple(nvec))
        raise WorldSimError(f"unknown action space type {d['type']!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "Discrete":
            return {"type": "Discrete", "n": self.nvec[0]}
        return {"type": "MultiDiscrete", "nvec": list(self.nvec)}

    def to_space(self) -> gym.Space:
        if self.kind == "Discrete":
            return gym.spaces.Discrete(self.nvec[0])
        return gym.spaces.MultiDiscrete(np.asarray(self.nvec, dtype=np.int64))

    def as_array(self, actions: Any, batch_shape: tuple[int, ...]) -> np.ndarray:
        """Validate actions and return them as int64 ``batch_shape + (num_components,)``.

        A ``Discrete`` space accepts ``batch_shape`` ints (or a trailing axis of size 1).
        Raises ``ValueError`` naming what was expected.
        """
        arr = np.asarray(actions)
        want = batch_shape + (self.num_components,)
        if self.kind == "Discrete" and arr.shape == batch_shape:
            arr = arr[..., None]
        if arr.shape != want:
            raise ValueError(
                f"actions must have shape {want} for {self.kind}{list(self.nvec)}, got {arr.shape}"
            )
        if arr.dtype.kind not in "biuf":  # object, complex, strings: no integer reading
            raise ValueError(f"actions must be integers, got dtype {arr.dtype}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"actions must be integers, got dtype {arr.dtype}")
        # Range first, in the actions' own dtype: cast first, a float such as 1e20 became
        # int64's minimum with a RuntimeWarning (under -W error, that warning was the error).
        hi = np.asarray(self.nvec, dtype=np.int64)
        if arr.size and (np.any(arr < 0) or np.any(arr >= hi)):
            raise ValueError(
                f"actions out of range: each component i must be in [0, nvec[i]) with nvec={list(self.nvec)}"
            )
        return arr.astype(np.int64)
