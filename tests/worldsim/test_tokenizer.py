"""The FSQ tokenizer: codes round trip, shapes, and that it learns to reconstruct."""

from __future__ import annotations

import pytest
import torch

from worldsim.presets import get_preset
from worldsim.tokenizer import FSQ, Tokenizer, TokenizerConfig, psnr


def test_fsq_codes_pack_and_unpack_exactly() -> None:
    fsq = FSQ((8, 5, 3))
    idx = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(5), torch.arange(3), indexing="ij")).reshape(3, -1)
    idx = idx.T.reshape(1, 120, 3).permute(0, 2, 1)[..., None]  # (1, D, 120, 1)
    codes = fsq.pack(idx)
    assert sorted(codes.flatten().tolist()) == list(range(120))
    assert torch.equal(fsq.unpack(codes).permute(0, 3, 1, 2), idx)


def test_fsq_levels_do_not_depend_on_the_dtype_a_latent_arrives_in() -> None:
    """A bf16 encoder's latents (the runtime's default on CPUs with native bf16) get the
    levels their values have, as in fp32 where the codes for training are made."""
    fsq = FSQ((8, 8, 8, 5, 5))
    z = (torch.randn(64, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.5).bfloat16()
    _, exact = fsq.quantize(z.float())  # the same values, exactly, in fp32
    _, got = fsq.quantize(z)
    assert torch.equal(got, exact)


def test_encode_decode_shapes_and_frame_size_errors() -> None:
    tok = Tokenizer(get_preset("tiny").tokenizer).eval()
    frames = torch.randint(0, 256, (3, 12, 20, 3), dtype=torch.uint8)
    codes = tok.encode(frames)
    assert codes.shape == (3, 6, 10) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.config.codebook_size
    out = tok.decode(codes)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="multiples of 2"):
        tok.check_frame_size(13, 20)
    with pytest.raises(ValueError, match="one count per resolution"):
        TokenizerConfig(channels=(8, 16), res_blocks=(1,))


def test_tokenizer_learns_to_reconstruct_frames() -> None:
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = Tokenizer(get_preset("tiny").tokenizer)
        # Smooth frames: colour gradients with a random offset, as a world's sky and ground.
        ramp = torch.linspace(0, 1, 16)
        base = torch.stack([ramp[:, None].expand(16, 16), ramp[None, :].expand(16, 16), 1 - ramp[:, None].expand(16, 16)], -1)
        frames = ((base[None] * 0.6 + torch.rand(8, 1, 1, 3) * 0.4) * 255).to(torch.uint8)
        opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
        first = tok(frames).logs["psnr"]
        for _ in range(150):
            out = tok(frames)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        with torch.no_grad():
            err = (tok.decode(tok.encode(frames)).float() - frames.float()) / 127.5
        final = psnr(float(err.pow(2).mean()))
    finally:
        torch.set_num_threads(n)
    assert final > 24.0 and final > first + 10.0, f"reconstruction PSNR {first:.1f} -> {final:.1f} dB"


def test_decoded_pixels_are_the_nearest_level_and_overshoot_saturates() -> None:
    """Every level survives the trip to floats and back; a decoder output past the ends of
    [-1, 1] (a bright sky overshooting) is 255 or 0, never wrapped round to black or white."""
    from worldsim.tokenizer import float_to_frames, frames_to_float

    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    assert torch.equal(float_to_frames(frames_to_float(levels)), levels)
    x = torch.tensor([-1.5, -1.0, 1.0 - 0.4 / 127.5, 1.0, 1.2, 3.0]).reshape(1, 1, 6).expand(3, 1, 6)
    assert float_to_frames(x)[0, :, 0].tolist() == [0, 0, 255, 255, 255, 255]
