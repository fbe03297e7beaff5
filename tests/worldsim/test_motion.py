"""The stay gate's reference moved with the camera (worldsim.motion): the shift, its
measurement on data, and what training and the runtime do with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import worldsim
from worldsim.checkpoint import ModelConfig, load_model, save_model
from worldsim.motion import as_table, estimate_motion, shift_codes, stay_reference
from worldsim.presets import dynamics_config, get_preset
from worldsim.spaces import ActionSpec
from worldsim.tokenizer import Tokenizer
from worldsim.transformer import Dynamics, DynamicsConfig

LEVELS = (5, 5, 5)


def test_shift_moves_codes_right_and_down_and_repeats_the_edge() -> None:
    c = torch.arange(16).reshape(1, 4, 4)
    right = shift_codes(c, torch.tensor([1]), torch.tensor([0]))[0]
    assert right.tolist() == [[0, 0, 1, 2], [4, 4, 5, 6], [8, 8, 9, 10], [12, 12, 13, 14]]
    up = shift_codes(c, torch.tensor([0]), torch.tensor([-1]))[0]
    assert up.tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [12, 13, 14, 15]]
    # Per world and per frame: [B, T, h, w] with shifts [B, T]
    two = shift_codes(torch.stack([c[0], c[0]])[None], torch.tensor([[0, 2]]), torch.tensor([[0, 1]]))
    assert torch.equal(two[0, 0], c[0]) and two[0, 1, 1].tolist() == [0, 0, 0, 1]
    # the runtime's numpy arrays shift alike
    assert np.array_equal(shift_codes(c.numpy(), np.array([1]), np.array([0]))[0], right.numpy())
    assert np.array_equal(shift_codes(np.stack([c[0].numpy()] * 2)[None], np.array([[0, 2]]), np.array([[0, 1]])), two.numpy())


def test_reference_is_the_previous_frame_without_a_table_or_a_matching_action() -> None:
    prev = torch.randint(0, 100, (2, 3, 4, 4))
    acts = torch.zeros(2, 3, 2, dtype=torch.long)
    assert stay_reference(prev, acts, ()) is prev
    assert torch.equal(stay_reference(prev, acts, ((1, 1, 1, 0),)), prev)
    acts[1, 2, 1] = 1  # one frame of one world turns
    ref = stay_reference(prev, acts, ((1, 1, 1, 0), (1, 1, 0, 1)))  # matching rows add up
    assert torch.equal(ref[0], prev[0]) and torch.equal(ref[1, :2], prev[1, :2])
    assert torch.equal(ref[1, 2], shift_codes(prev[1, 2], torch.tensor(1), torch.tensor(1)))


def scrolling_world(n: int, T: int, seed: int = 0, size: int = 12):
    """Codes where action component 0 scrolls the picture (0: one cell left, 1: still, 2: two
    cells right, new cells random) and component 1 does nothing to it."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, math.prod(LEVELS), (n, size, size), generator=g)
    acts = torch.stack([torch.randint(0, 3, (n, T - 1), generator=g), torch.randint(0, 2, (n, T - 1), generator=g)], -1)
    frames = [frame]
    for t in range(T - 1):
        dx = torch.tensor([-1, 0, 2])[acts[:, t, 0]]
        moved = shift_codes(frame, dx, torch.zeros_like(dx))
        fresh = torch.randint(0, math.prod(LEVELS), frame.shape, generator=g)
        cols = torch.arange(size)
        new = ((cols < dx[:, None]) | (cols >= size + dx[:, None]))[:, None, :].expand_as(frame)  # cells shifted in
        frame = torch.where(new, fresh, moved)
        frames.append(frame)
    return torch.stack(frames, 1), acts


def test_estimate_finds_the_shift_of_each_action_value_and_nothing_else() -> None:
    codes, acts = scrolling_world(256, 6)
    est = estimate_motion(codes, acts, (3, 2), names=["scroll", "other"])
    assert est.table == ((0, 0, -1, 0), (0, 2, 2, 0))
    assert est.matches["scroll=0"]["best"] == 1.0 and est.matches["scroll=0"]["none"] < 0.1
    assert est.matches["scroll=1"]["dx"] == 0 and est.matches["scroll=1"]["best"] == 1.0
    assert {"other=0", "other=1"} <= set(est.matches)  # measured, no row


def test_table_round_trips_through_a_checkpoint_and_bad_rows_are_refused(tmp_path) -> None:
    preset = get_preset("tiny")
    spec = ActionSpec("MultiDiscrete", (3, 2))
    dyn = Dynamics(dynamics_config(preset, preset.tokenizer.levels, spec, 4, stay_gate=True))
    cfg = ModelConfig(tokenizer=preset.tokenizer, dynamics=DynamicsConfig.from_dict({**dyn.cfg.to_dict(), "stay_motion": [[0, 2, 1, 0]]}),
                      frame_shape=(16, 16))  # fmt: skip
    save_model(tmp_path / "m.safetensors", cfg, Tokenizer(preset.tokenizer), Dynamics(cfg.dynamics))
    assert load_model(tmp_path / "m.safetensors").config.dynamics.stay_motion == ((0, 2, 1, 0),)
    old = dyn.cfg.to_dict()
    del old["stay_motion"]  # a checkpoint from before the field
    assert DynamicsConfig.from_dict(old).stay_motion == ()
    with pytest.raises(ValueError, match="component, value, dx, dy"):
        as_table([[0, 1, 1]])


def test_a_strong_gate_follows_the_moved_reference_in_training_and_in_the_runtime(tmp_path) -> None:
    """With a gate that keeps whatever it favours, the frame after a scrolling action is the
    previous one scrolled: in the training loss's logits and in the dream the runtime samples."""
    preset = get_preset("tiny")
    spec = ActionSpec("MultiDiscrete", (3, 2))
    torch.manual_seed(0)
    table = ((0, 0, -1, 0), (0, 2, 1, 0))
    dyn = Dynamics(dynamics_config(preset, preset.tokenizer.levels, spec, 4, stay_gate=True))
    dyn = Dynamics(DynamicsConfig.from_dict({**dyn.cfg.to_dict(), "stay_motion": table})).eval()
    with torch.no_grad():
        dyn.stay_head.bias.fill_(1e3)
    levels = preset.tokenizer.levels
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, math.prod(levels), (2, 3, 4, 4), generator=g)
    acts = torch.tensor([[[2, 0], [1, 1]], [[0, 1], [2, 0]]])
    masked = torch.full_like(codes[:, 1:], -1)
    pred = dyn.teacher_forced(codes, acts, torch.zeros(2, 3), masked)
    ref = stay_reference(codes[:, :-1], acts, table)
    logits = dyn.final_logits(pred, ref)
    greedy = sum(part.argmax(-1) * int(r) for part, r in zip(logits.split(list(levels), -1), dyn.radix))
    assert torch.equal(greedy, ref) and not torch.equal(ref, codes[:, :-1])

    path = tmp_path / "moving.safetensors"
    save_model(path, ModelConfig(tokenizer=preset.tokenizer, dynamics=dyn.cfg, frame_shape=(16, 16)), Tokenizer(preset.tokenizer), dyn)
    m = worldsim.load(str(path), device="cpu", temperature=0, unfreeze=0)
    rng = np.random.default_rng(0)
    m.prompt(rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8), np.zeros((2, 1, 2), np.int64))
    for step in ([[2, 0], [1, 1]], [[0, 1], [1, 0]]):
        before = m.last_codes
        m.step(np.array(step))
        dx = np.array([{0: -1, 1: 0, 2: 1}[a] for a, _ in step])
        want = shift_codes(torch.from_numpy(before), torch.from_numpy(dx), torch.zeros(2, dtype=torch.long)).numpy()
        assert np.array_equal(m.last_codes, want)
