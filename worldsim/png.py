"""A small, fast PNG codec for RGB frames, written with zlib and numpy.

Recordings store every frame as a lossless PNG. Pillow's encoder spends most of its time
choosing a filter per row; at 64x64 that costs more than compressing, and recording
throughput is bounded by it. Here every row uses one fixed filter followed by zlib at a
low level. The result is a standard PNG that any viewer opens.

The default filter is "None" (raw bytes): BlockWorld's pixel-art textures repeat exactly,
which zlib's matcher finds in raw rows but not in differences, so raw rows come out ~19%
smaller than "Sub" rows on its frames and cost less time (``worldsim bench record``
reports the figures). Smooth, photographic frames compress better with ``sub_filter``.

Decoding takes a numpy fast path for PNGs laid out the way :func:`encode_png` writes them
(8-bit RGB, not interlaced, every row filter 0, 1 or 2 alike) and hands anything else to
Pillow. Both paths check the image size *before* inflating, so a corrupt or hostile
header cannot make the decoder allocate more than the caller expects.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZLIB_LEVEL = 1
"""zlib level 1: levels 3-6 saved only ~5% of the bytes on 64x64 frames, for 1.5x the time."""
_FILTER_NONE, _FILTER_SUB, _FILTER_UP = 0, 1, 2
_COLOR_RGB = 2


class PNGError(ValueError):
    """Bytes that are not a PNG of the expected size."""


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(frame: np.ndarray, level: int = ZLIB_LEVEL, sub_filter: bool = False) -> bytes:
    """Encode one RGB frame as a PNG.

    Args:
        frame: uint8 array [H, W, 3].
        level: zlib compression level, 0-9.
        sub_filter: store each byte minus its left neighbour (PNG filter "Sub"), which
            suits smooth images; raw rows (filter "None") suit pixel art.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: if ``frame`` is not uint8 [H, W, 3].
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    h, w, _ = frame.shape
    rows = frame.reshape(h, w * 3)  # [H, W*3]: one PNG scanline per row
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)  # [H, 1 + W*3]: filter byte + scanline
    if sub_filter:
        raw[:, 0] = _FILTER_SUB
        raw[:, 1:4] = rows[:, :3]
        np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])  # wraps mod 256, as PNG wants
    else:
        raw[:, 0] = _FILTER_NONE
        raw[:, 1:] = rows
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_RGB, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """The (height, width) a PNG's header declares, without decoding it.

    Raises:
        PNGError: if ``data`` does not start with a PNG signature and IHDR chunk.
    """
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise PNGError("not a PNG (bad signature or missing IHDR chunk)")
    w, h = struct.unpack(">II", data[16:24])
    return h, w


def _fast_decode(data: bytes, h: int, w: int) -> np.ndarray | None:
    """Decode our own layout with numpy; None when the PNG uses anything else."""
    depth, color, _, _, interlace = data[24:29]
    if depth != 8 or color != _COLOR_RGB or interlace != 0:
        return None
    idat = []
    pos = 33
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise PNGError("PNG chunk runs past the end of the data")
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(tag + body) != crc:
            raise PNGError(f"PNG chunk {tag!r} fails its CRC check")
        if tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos += 12 + length
    want = h * (w * 3 + 1)
    inflater = zlib.decompressobj()
    try:
        # Bounded: inflates at most one byte more than a frame of the declared size.
        raw = inflater.decompress(b"".join(idat), want + 1)
    except zlib.error as e:
        raise PNGError(f"PNG image data is corrupt: {e}") from None
    if len(raw) != want or not inflater.eof:
        raise PNGError(f"PNG image data has the wrong length for {w}x{h} RGB")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, w * 3 + 1)  # [H, 1 + W*3]
    filters = rows[:, 0]
    if not np.all(filters == filters[0]):
        return None
    pix = rows[:, 1:].reshape(h, w, 3)  # [H, W, 3]
    if filters[0] == _FILTER_NONE:
        return pix.copy()
    if filters[0] == _FILTER_SUB:
        return np.cumsum(pix, axis=1, dtype=np.uint8)  # uint8 sums wrap mod 256, undoing Sub
    if filters[0] == _FILTER_UP:
        return np.cumsum(pix, axis=0, dtype=np.uint8)
    return None


def decode_png(data: bytes, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a PNG into a uint8 RGB array [H, W, 3].

    Args:
        data: the PNG file's bytes.
        shape: the (height, width) the caller expects; checked before inflating, so a
            corrupt header cannot trigger a huge allocation.

    Raises:
        PNGError: if ``data`` is not a valid PNG, or its size differs from ``shape``.
    """
    h, w = png_size(data)
    if shape is not None and (h, w) != tuple(shape):
        raise PNGError(f"PNG is {h}x{w} (HxW), expected {shape[0]}x{shape[1]}")
    if h == 0 or w == 0:
        raise PNGError("PNG has zero width or height")
    frame = _fast_decode(data, h, w)
    if frame is not None:
        return frame
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            frame = np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises many types for bad input; callers want one
        raise PNGError(f"PNG cannot be decoded: {e}") from None
    if frame.shape[:2] != (h, w):
        raise PNGError(f"PNG decodes to {frame.shape[:2]}, its header says {(h, w)}")
    return frame
