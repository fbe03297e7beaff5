"""The frame tokenizer: a convolutional autoencoder with a finite scalar quantiser (FSQ).

A frame ``uint8 [H, W, 3]`` becomes a grid of ``[H / stride, W / stride]`` integer codes and
back. FSQ (Mentzer et al. 2023) rounds each of a few bounded latent channels to a fixed
number of levels, so there is no codebook to collapse and no commitment loss to tune; the
code of a cell is the mixed-radix number of its per-channel levels. The dynamics model
predicts each channel's level separately (``levels`` small categoricals per cell instead of
one huge one), which keeps its output head tiny.

The encoder and decoder are plain convolutions without normalisation layers: GroupNorm
costs as much as a convolution on a CPU at these sizes, and the autoencoder is small
enough to train stably without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.errors import refuse_unknown_fields


@dataclass(frozen=True)
class TokenizerConfig:
    """Sizes of the frame autoencoder."""

    channels: tuple[int, ...] = (32, 64, 128)
    """Feature channels at full resolution and after each 2x downsampling (len - 1 downsamplings)."""
    levels: tuple[int, ...] = (8, 8, 8, 5, 5)
    """FSQ levels per latent channel; the codebook size is their product."""
    res_blocks: tuple[int, ...] = (0, 1, 1)
    """Residual blocks at each resolution (full first), in the encoder and in the decoder.

    The decoder runs once per generated frame, so the blocks sit at the low resolutions
    where a convolution costs 4-16x less than at full resolution."""
    refiner_channels: int = 0
    """Feature channels of the refiner (:class:`Refiner`); 0: no refiner. The refiner is
    trained after the rest (``worldsim train refiner``) and changes no code."""
    refiner_blocks: int = 0
    """Residual blocks of the refiner, at full resolution."""

    def __post_init__(self) -> None:
        if len(self.res_blocks) != len(self.channels):
            raise ValueError(f"res_blocks needs one count per resolution ({len(self.channels)}), got {self.res_blocks}")

    @property
    def stride(self) -> int:
        """Pixels per latent cell along each axis."""
        return 2 ** (len(self.channels) - 1)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def codes_config(self) -> TokenizerConfig:
        """This config without the refiner: what decides the codes and the plain decoder, so
        two tokenizers whose ``codes_config`` and weights agree give a dynamics the same codes."""
        return replace(self, refiner_channels=0, refiner_blocks=0)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.refiner_channels:  # without a refiner, the dict an older WorldSim wrote and reads
            del d["refiner_channels"], d["refiner_blocks"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        """The config ``to_dict`` wrote; an unknown field is a ``ValueError``, not dropped."""
        refuse_unknown_fields("tokenizer config", d, {f.name for f in fields(cls)})
        return cls(
            channels=tuple(d["channels"]), levels=tuple(d["levels"]), res_blocks=tuple(d["res_blocks"]),
            # absent from files written before the refiner existed: none
            refiner_channels=d.get("refiner_channels", 0), refiner_blocks=d.get("refiner_blocks", 0),
        )


@dataclass
class TokenizerOutput:
    """What one training forward pass of the tokenizer returns."""

    loss: torch.Tensor
    """Scalar reconstruction loss (mean squared error on pixels scaled to [-1, 1])."""
    recon: torch.Tensor
    """Reconstructed frames, float in [-1, 1], ``[B, 3, H, W]``."""
    logs: dict[str, float] = field(default_factory=dict)
    """Scalars worth logging: ``mse`` and ``psnr`` (dB, on the 0..255 scale)."""


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` -> float ``[..., 3, H, W]`` in [-1, 1]."""
    x = frames.float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)  # (..., 3, H, W)


def float_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float ``[..., 3, H, W]`` in [-1, 1] -> ``uint8 [..., H, W, 3]``, rounded and clamped."""
    x = x.movedim(-3, -1)  # (..., H, W, 3)
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def psnr(mse: float) -> float:
    """PSNR in dB on the 0..255 scale from an MSE measured on the [-1, 1] scale."""
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        # Start as identity so a deep stack trains from the first step without normalisation.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class FSQ(nn.Module):
    """Finite scalar quantisation of ``len(levels)`` channels, with a straight-through gradient."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        radix = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("radix", torch.tensor(radix, dtype=torch.int64), persistent=False)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [B, D, h, w]`` -> (values in [-1, 1] with STE gradient, level indices int64)."""
        # In fp32 whatever the encoder ran in: bf16 has 1/32 steps between 4 and 8, so tanh,
        # scale and round in bf16 put about 3 % of a bf16 encoder's cells on another level
        # than their latent's (shipped model: bf16 encodes matched fp32's, the codes the
        # dynamics trained on, on 93.7 % of cells; 96.9 % with this).
        z = z.float()
        top = (self.levels - 1).view(1, -1, 1, 1).to(z.dtype)
        u = (torch.tanh(z) + 1.0) * 0.5 * top  # in (0, L-1)
        idx = u.round()
        u = u + (idx - u).detach()  # straight-through rounding
        return u / top * 2.0 - 1.0, idx.long()

    def pack(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-channel levels ``[B, D, h, w]`` -> one code per cell ``[B, h, w]``."""
        return (idx * self.radix.view(1, -1, 1, 1)).sum(1)

    def unpack(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., h, w]`` -> per-channel levels ``[..., h, w, D]``."""
        return (codes.unsqueeze(-1) // self.radix) % self.levels

    def values(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-channel levels ``[..., D]`` -> values in [-1, 1] ``[..., D]``."""
        return idx.float() / (self.levels - 1).float() * 2.0 - 1.0


class Refiner(nn.Module):
    """Sharpens a decoded frame with the frame shown before it, as a video codec's P-frame
    reuses its reference frame.

    The decoder sees only the codes, 13.6 bits a 4x4 cell, so every frame it draws carries its
    reconstruction error (about 33 dB) even where the world did not change. The frame before
    (the real one after a prompt, then the frame the dream showed) holds the detail the codes
    cannot. The refiner gets that frame, the decoded frame, and a mask of the cells whose code
    changed, and returns the decoded frame plus a correction, so it starts (zero-initialised
    output) as the plain decoder. It is trained on chains of steps in which each step's input
    is its own previous output (``worldsim train refiner``), since at run time it feeds on
    itself; trained on single steps it gained more but held its pixels still enough that a
    long BlockWorld rollout was judged collapsed (docs/model.md, "Refiner").

    It changes pixels only: the codes, and so everything the dynamics sees, stay the same.
    """

    def __init__(self, channels: int, blocks: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.inp = nn.Conv2d(7, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, prev: torch.Tensor, decoded: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        """``prev``, ``decoded``: float ``[B, 3, H, W]`` in [-1, 1]; ``changed``: bool ``[B, h, w]``
        -> the refined frame, float ``[B, 3, H, W]``."""
        # nearest-neighbour upsampling by a whole factor repeats each cell's flag over its pixels
        mask = F.interpolate(changed.to(decoded.dtype)[:, None], scale_factor=self.stride, mode="nearest")
        x = torch.cat([prev.to(decoded.dtype), decoded, mask], 1)
        return decoded + self.out(F.silu(self.body(self.inp(x))))


class Tokenizer(nn.Module):
    """Frame <-> integer code grid.

    ``encode`` and ``decode`` take and give the public forms (uint8 frames, int64 codes), so
    the runtime and the ONNX export can call them directly.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        dim = len(config.levels)
        enc: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1)]
        for i, c in enumerate(ch):
            enc += [ResBlock(c) for _ in range(config.res_blocks[i])]
            if i + 1 < len(ch):
                enc += [nn.Conv2d(c, ch[i + 1], 4, stride=2, padding=1)]
        enc += [nn.SiLU(), nn.Conv2d(ch[-1], dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(dim, ch[-1], 3, padding=1)]
        for i in range(len(ch) - 1, -1, -1):
            dec += [ResBlock(ch[i]) for _ in range(config.res_blocks[i])]
            if i > 0:
                # Sub-pixel upsampling: a conv at the low resolution then a pixel shuffle,
                # cheaper than a transposed conv and free of its checkerboard artefacts.
                dec += [nn.SiLU(), nn.Conv2d(ch[i], ch[i - 1] * 4, 3, padding=1), nn.PixelShuffle(2)]
        dec += [nn.SiLU(), nn.Conv2d(ch[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.fsq = FSQ(config.levels)
        self.refiner = None
        if config.refiner_channels:
            self.refiner = Refiner(config.refiner_channels, config.refiner_blocks, config.stride)

    def check_frame_size(self, height: int, width: int) -> None:
        s = self.config.stride
        if height % s or width % s:
            raise ValueError(f"frame height and width must be multiples of {s}, got {height}x{width}")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``[B, H, W, 3]`` -> codes int64 ``[B, H/stride, W/stride]``."""
        _, idx = self.fsq.quantize(self.encoder(frames_to_float(frames)))
        return self.fsq.pack(idx)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes int64 ``[B, h, w]`` -> uint8 frames ``[B, h*stride, w*stride, 3]``."""
        vals = self.fsq.values(self.fsq.unpack(codes)).movedim(-1, 1)  # (B, D, h, w)
        return float_to_frames(self.decoder(vals))

    def refine(self, prev_frames: torch.Tensor, frames: torch.Tensor, prev_codes: torch.Tensor,
               codes: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The refiner's frames: ``prev_frames`` (uint8 ``[B, H, W, 3]``, the frames shown
        before), ``frames`` (uint8, :meth:`decode` of ``codes``), and the codes of both ->
        uint8 ``[B, H, W, 3]``. Needs a tokenizer with a refiner."""
        if self.refiner is None:
            raise ValueError("this tokenizer has no refiner (train one with `worldsim train refiner`)")
        y = self.refiner(frames_to_float(prev_frames), frames_to_float(frames), codes != prev_codes)
        return float_to_frames(y.float())

    def forward(self, frames: torch.Tensor, train_encoder: bool = True) -> TokenizerOutput:
        """Reconstruction loss of uint8 frames ``[B, H, W, 3]``.

        ``train_encoder=False`` runs the encoder without gradients: decoder fine-tuning,
        which leaves every code (and so every model trained on them) unchanged.
        """
        x = frames_to_float(frames)
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            vals, _ = self.fsq.quantize(self.encoder(x))
        recon = self.decoder(vals)
        loss = F.mse_loss(recon.float(), x)
        mse = float(loss.detach())
        return TokenizerOutput(loss=loss, recon=recon, logs={"mse": mse, "psnr": psnr(mse)})
