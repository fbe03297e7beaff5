"""Render real BlockWorld frames for the docs: several sizes, day and night.

``python -m envs.blockworld.pictures [--out docs/images] [--seed 0]`` writes, for each size
in ``SIZES`` and each time of day, the frame at native resolution
(``blockworld_<w>x<h>_<day|night>.png``) and one contact sheet, ``blockworld_frames.png``,
with every frame enlarged by whole pixels (nearest neighbour) so that their pixels stay
visible. The frames come straight from ``BlockWorldEnv``: a reset, then a few turning
steps to face an interesting view.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from envs.blockworld.env import BlockWorldEnv

SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 96), (160, 96))
TIMES: dict[str, float] = {"day": 0.2, "night": 0.7}
SHEET_HEIGHT = 288
"""Each frame is enlarged by a whole factor to at most this height on the contact sheet."""


def render_frame(width: int, height: int, seed: int, time_of_day: float, turns: int) -> np.ndarray:
    """One frame after a reset and ``turns`` steps of turning right (5 degrees each)."""
    env = BlockWorldEnv(width=width, height=height)
    obs, _ = env.reset(seed=seed, options={"time_of_day": time_of_day})
    turn = np.array([0, 0, 0, 2, 0, 0, 0, 0], dtype=np.int64)
    for _ in range(turns):
        obs, *_ = env.step(turn)
    env.close()
    return obs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="reset seed (default 0)")
    parser.add_argument("--turns", type=int, default=54, help="turning steps before the shot")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, tod in TIMES.items():
        row = []
        for w, h in SIZES:
            frame = render_frame(w, h, args.seed, tod, args.turns)
            path = args.out / f"blockworld_{w}x{h}_{name}.png"
            Image.fromarray(frame).save(path)
            print(f"wrote {path}")
            k = SHEET_HEIGHT // h
            big = frame.repeat(k, axis=0).repeat(k, axis=1)  # (h*k, w*k, 3)
            pad = np.full((SHEET_HEIGHT, big.shape[1] + 8, 3), 255, dtype=np.uint8)
            pad[: big.shape[0], : big.shape[1]] = big
            row.append(pad)
        rows.append(np.concatenate(row, axis=1))
    width = max(r.shape[1] for r in rows)
    sheet = np.full((len(rows) * (SHEET_HEIGHT + 8), width, 3), 255, dtype=np.uint8)
    for i, r in enumerate(rows):
        sheet[i * (SHEET_HEIGHT + 8) : i * (SHEET_HEIGHT + 8) + SHEET_HEIGHT, : r.shape[1]] = r
    path = args.out / "blockworld_frames.png"
    Image.fromarray(sheet).save(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
