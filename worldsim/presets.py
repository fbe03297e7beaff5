"""Model presets by name. Sizes are in the names' docs; ``worldsim bench`` prints params and FLOPs.

The dynamics config needs the action space and the tokenizer's levels, which come from the
data and the tokenizer checkpoint, so a preset is a tokenizer config plus the dynamics
*sizes*; :func:`dynamics_config` joins them.

Budget: ``small`` was sized on the project's first CPU (2 AVX2 cores, no native bf16, about
40 GFLOP/s fp32 in large matmuls and far less in the small ones of single-world generation)
for 30 frames/s at B=1: 64x64 frames, a stride-4 tokenizer (16x16 codes) and 4x4-cell
patches, so only 16 tokens per frame. The current machine (AVX512-BF16) runs it in bf16;
README, "Benchmarks", has its rates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from worldsim.errors import WorldSimError
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import TokenizerConfig
from worldsim.transformer import DynamicsConfig


@dataclass(frozen=True)
class Preset:
    """A named model size."""

    tokenizer: TokenizerConfig
    width: int
    layers: int
    heads: int
    patch: int
    context: int
    summary: str
    """One line with the real sizes, shown by ``--help`` and the benchmarks."""


DEFAULT_STAY_GATE = True
"""Whether new dynamics models get the stay gate (``transformer`` module docstring). On, as in
the shipped model: fine-tuning the BlockWorld preview with it for 950 steps lowered the
held-out loss from 0.81 to 0.62 and raised teacher-forced PSNR by 1.8 dB. Longer gated
training made open-loop dreams lock into a frozen frame (docs/model.md, "Stay gate");
``worldsim train dynamics --no-stay-gate`` leaves it out."""
DEFAULT_STILL_HEAD = False
"""Whether new dynamics models get the still head (``transformer`` module docstring); off, as
the runtime's use of it is (``worldsim.runtime.DEFAULT_STILL``). Both heads want a
moderate learning rate: on the toy world of ``tests/worldsim/test_transformer.py`` they
slowed convergence at 1e-2 and matched the plain model at 3e-3 (training defaults to 3e-4)."""

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        tokenizer=TokenizerConfig(channels=(16, 32), levels=(5, 5, 5), res_blocks=(0, 1)),
        width=64, layers=2, heads=2, patch=2, context=8,
        summary="tokenizer stride 2, 125 codes; dynamics 2 layers x 64 wide, 8-frame context (0.07M + 0.11M params; for tests)",
    ),
    "small": Preset(
        tokenizer=TokenizerConfig(channels=(24, 48, 96), levels=(8, 8, 8, 5, 5), res_blocks=(0, 1, 1)),
        width=256, layers=6, heads=4, patch=4, context=24,
        summary="tokenizer stride 4, 12800 codes; dynamics 6 layers x 256 wide, 4x4-cell patches, 24-frame context (0.72M + 4.9M params)",
    ),
    "base": Preset(
        tokenizer=TokenizerConfig(channels=(32, 64, 128), levels=(8, 8, 8, 5, 5), res_blocks=(0, 1, 2)),
        width=384, layers=10, heads=6, patch=2, context=32,
        summary="tokenizer stride 4, 12800 codes; dynamics 10 layers x 384 wide, 2x2-cell patches, 32-frame context (1.9M + 17.8M params)",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise WorldSimError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def dynamics_config(
    preset: Preset, levels: tuple[int, ...], spec: ActionSpec, context: int | None = None,
    stay_gate: bool | None = None, still_head: bool | None = None,
) -> DynamicsConfig:  # fmt: skip
    """The dynamics config of ``preset`` for a tokenizer's ``levels`` and an action space."""
    cfg = DynamicsConfig(
        levels=tuple(levels), action_nvec=tuple(spec.nvec), action_kind=spec.kind,
        width=preset.width, layers=preset.layers, heads=preset.heads, patch=preset.patch, context=preset.context,
        stay_gate=DEFAULT_STAY_GATE if stay_gate is None else bool(stay_gate),
        still_head=DEFAULT_STILL_HEAD if still_head is None else bool(still_head),
    )
    if context is not None:
        if context < 2:
            raise WorldSimError(f"context must be at least 2 frames, got {context}")
        cfg = replace(cfg, context=int(context))
    return cfg
