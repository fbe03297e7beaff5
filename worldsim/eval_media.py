"""Plots (PNG, matplotlib without a display) and videos (GIF, MP4) of an evaluation."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio3
import numpy as np

from worldsim.atomic import atomic_write
from worldsim.errors import WorldSimError
from worldsim.metrics import CollapseReport, FrameStats

DIFF_GAIN = 4
"""The difference panel shows |real - dream| times this, so small errors stay visible."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt

    return plt


def side_by_side(real: np.ndarray, dream: np.ndarray, scale: int = 2) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` twice -> ``[T, sH, 3sW + 2s, 3]``: real | dream | difference."""
    diff = np.clip(np.abs(real.astype(np.int16) - dream.astype(np.int16)) * DIFF_GAIN, 0, 255).astype(np.uint8)
    T, H = real.shape[:2]
    gap = np.full((T, H, 1, 3), 255, np.uint8)
    out = np.concatenate([real, gap, dream, gap, diff], axis=2)  # (T, H, 3W + 2, 3)
    return np.repeat(np.repeat(out, scale, axis=1), scale, axis=2)


# Videos are written aside and renamed when whole (atomic_write): a demo or eval interrupted
# while encoding one left a cut-short video in place of the one an earlier run had written.


def gif_bytes(frames: np.ndarray | Sequence[np.ndarray], fps: float = 20.0) -> bytes:
    """An endlessly looping GIF, encoded in memory.

    Encoded straight into its file, a GIF the disk refused (full) was encoded again when
    imageio's writer was deleted, which printed tracebacks after the command's error.
    """
    return iio3.imwrite("<bytes>", list(frames), extension=".gif", duration=1000.0 / fps, loop=0)


def write_gif(path: Path, frames: np.ndarray | Sequence[np.ndarray], fps: float = 20.0) -> None:
    """An endlessly looping GIF."""
    data = gif_bytes(frames, fps)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def check_mp4(written: str | Path, path: str | Path) -> None:
    """Refuse the MP4 ``written`` (standing in for ``path``) unless ffmpeg reads it back.

    imageio never looks at ffmpeg's exit status: an ffmpeg that could not write its file (a
    full disk) left a cut-short video with no index, which was renamed into place and the
    command said it wrote every frame and exited 0. Reading it back costs one short ffmpeg
    run that copies the stream and decodes nothing.

    Raises:
        WorldSimError: naming ``path`` and what ffmpeg found wrong.
    """
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(written), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        said = [re.sub(r"^\[[^]]*\] ", "", line) for line in done.stderr.splitlines() if line.strip()]
        raise WorldSimError(f"{path}: ffmpeg did not finish the video ({said[0] if said else f'exit status {done.returncode}'}); "
                            "is the disk full? Nothing was written there")  # fmt: skip


def write_mp4(path: Path, frames: np.ndarray, fps: float = 20.0) -> None:
    """An H.264 MP4; frames are padded to even sizes, as the codec needs.

    Raises:
        WorldSimError: ffmpeg could not write the whole video (:func:`check_mp4`).
    """
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))

    def write(tmp: str) -> None:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        check_mp4(tmp, path)

    atomic_write(path, write, keep_suffix=True)


def plot_horizon(path: Path, horizons: np.ndarray, curves: dict[str, np.ndarray], ylabel: str, title: str) -> None:
    """Lines of a metric against the open-loop horizon (one per curve)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, values in curves.items():
        ax.plot(horizons, values, marker="o", markersize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks([h for h in (1, 2, 4, 8, 16, 32, 64) if h <= horizons.max()])
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("open-loop horizon (steps)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_stability(path: Path, report: CollapseReport, real: FrameStats | None, title: str) -> None:
    """The collapse statistics of a long rollout over time, the real-data band shaded."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), dpi=100, sharex=True)
    s = report.stats
    t = np.arange(len(s.std))
    panels = [("std", "spatial std (grey levels)", report.band.std), ("edge", "edge energy (grey levels)", report.band.edge),
              ("change", "frame-to-frame change", None)]  # fmt: skip
    for ax, (name, label, band) in zip(axes, panels):
        if real is not None:
            ax.plot(t, getattr(real, name), color="tab:gray", lw=0.6, alpha=0.7, label="real")
        ax.plot(t, getattr(s, name), color="tab:blue", lw=0.8, label="dream")
        if band is not None:
            ax.axhspan(band[0], band[1], color="tab:green", alpha=0.08, label="real-data band")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    flagged = np.flatnonzero(report.flagged)
    if flagged.size:
        axes[0].plot(flagged, s.std[flagged], "rx", ms=3, label="flagged frame")
    if report.collapse_step is not None:
        for ax in axes:
            ax.axvline(report.collapse_step, color="red", lw=1)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("open-loop step")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
