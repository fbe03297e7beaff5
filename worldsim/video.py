"""``worldsim replay``: a recording (file or shard folder) as an MP4 or GIF video.

Episodes play one after another, each in step order, even when a vector env wrote them
interleaved. Frames are scaled up by an integer factor (nearest neighbour, so pixels stay
crisp), and ``--overlay`` prints the episode, step, action and reward under each frame.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worldsim.atomic import atomic_write
from worldsim.data import WindowDataset
from worldsim.errors import WorldSimError
from worldsim.eval_media import check_mp4, gif_bytes
from worldsim.recording import Record

VIDEO_SUFFIXES = (".mp4", ".gif")
OVERLAY_ROWS = 2
ROW_PIXELS = 12
"""Height of one overlay text line: Pillow's default bitmap font is 11 px tall."""


def _action_text(rec: Record, names: list[str] | None) -> str:
    if rec.action is None:
        return "reset" + ("" if rec.seed is None else f" seed={rec.seed}")
    values = rec.action.tolist()
    if names and len(names) == len(values):
        held = [f"{n}={v}" for n, v in zip(names, values) if v != 0]
        return " ".join(held) or "noop"
    return "a=" + ",".join(str(v) for v in values)


def overlay(frame: np.ndarray, rec: Record, names: list[str] | None) -> np.ndarray:
    """``frame`` (already scaled) above two text lines: episode/step/reward, then the action."""
    from PIL import Image, ImageDraw

    h, w, _ = frame.shape
    canvas = Image.new("RGB", (w, h + OVERLAY_ROWS * ROW_PIXELS), (0, 0, 0))
    canvas.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(canvas)
    end = " TERMINATED" if rec.terminated else " truncated" if rec.truncated else ""
    draw.text((2, h), f"ep {rec.episode} t {rec.t} r {rec.reward:+.2f}{end}", fill=(255, 255, 255))
    draw.text((2, h + ROW_PIXELS), _action_text(rec, names), fill=(255, 220, 120))
    return np.asarray(canvas)


def replay(
    path: str | Path,
    out: str | Path,
    *,
    fps: float = 20.0,
    show_overlay: bool = False,
    scale: int | None = None,
    episode: int | None = None,
    max_frames: int | None = None,
) -> int:
    """Write a recording's frames to ``out`` (``.mp4`` or ``.gif``); returns frames written.

    Args:
        path: recording file or shard folder.
        out: the video file; its suffix picks the format.
        fps: frames per second (the env's tick rate plays it at real speed).
        show_overlay: add the episode, step, action and reward under each frame.
        scale: integer upscaling; by default the smallest that makes the frame >= 256 px tall.
        episode: only this episode number.
        max_frames: stop after this many frames.

    Raises:
        WorldSimError: for an unknown suffix, a missing episode, a bad recording, or an MP4
            that ffmpeg could not write whole (a full disk).
    """
    out = Path(out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise WorldSimError(f"--out must end in {' or '.join(VIDEO_SUFFIXES)}, got {out.name!r}")
    if fps <= 0:
        raise WorldSimError(f"--fps must be positive, got {fps}")
    ds = WindowDataset([path], 1)
    h, w, _ = ds.observation_shape
    scale = scale or max(1, -(-256 // h))
    names = ds.header.get("action_names")
    names = names if isinstance(names, list) else None
    keys = [e.episode for e in ds.episodes]
    if episode is not None and episode not in keys:
        raise WorldSimError(f"{path}: no episode {episode}; it holds episodes {keys[:10]}...")
    written = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal written
        # Only the chosen episode's records: reading every record to skip the others
        # took a 200,000-record folder 195,410 reads to write 20 frames of a late episode.
        chosen = [k for k, e in enumerate(ds.episodes) if episode is None or e.episode == episode]
        for r in (r for k in chosen for r in ds.episode_records(k)):
            rec = ds.record(r)
            frame = rec.image((h, w)).repeat(scale, axis=0).repeat(scale, axis=1)  # [H*s, W*s, 3]
            if show_overlay:
                frame = overlay(frame, rec, names)
            yield _even(frame)
            written += 1
            if max_frames is not None and written >= max_frames:
                break

    def write(tmp: str) -> None:
        if out.suffix.lower() == ".gif":
            Path(tmp).write_bytes(gif_bytes(list(frames()), fps))
            return
        import imageio.v2 as iio

        writer = iio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1)
        try:
            for frame in frames():
                writer.append_data(frame)
        finally:
            writer.close()
        check_mp4(tmp, out)

    # Written aside and renamed when whole: Ctrl-C used to leave a cut-short video (or, with
    # ffmpeg stopped by the same Ctrl-C, one with no index that no player opens) at --out,
    # in place of the video an earlier run had written there.
    atomic_write(out, write, keep_suffix=True)
    return written


def _even(frame: np.ndarray) -> np.ndarray:
    # H.264 in yuv420p needs even sides; pad one black row/column rather than rescale.
    h, w, _ = frame.shape
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="worldsim replay", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="recording file or shard folder")
    p.add_argument("--out", required=True, help="video.mp4 or video.gif")
    p.add_argument(
        "--fps", type=float, default=20.0, help="frames per second (default 20, the rate BlockWorld ticks at)"
    )
    p.add_argument("--overlay", action="store_true", help="show episode, step, action and reward")
    p.add_argument(
        "--scale", type=int, default=None, help="integer upscaling (default: to >= 256 px)"
    )
    p.add_argument("--episode", type=int, default=None, help="only this episode")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    args = p.parse_args(argv)
    if args.scale is not None and not 1 <= args.scale <= 16:
        raise WorldSimError(f"--scale must be 1-16, got {args.scale}")
    if args.max_frames is not None and args.max_frames < 1:
        raise WorldSimError(f"--max-frames must be at least 1, got {args.max_frames}")
    n = replay(
        args.path, args.out, fps=args.fps, show_overlay=args.overlay, scale=args.scale,
        episode=args.episode, max_frames=args.max_frames,
    )  # fmt: skip
    print(f"wrote {n} frames to {args.out}")
    return 0
