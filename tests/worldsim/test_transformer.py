"""The dynamics transformer: learning, block-causality and the KV-cache path."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from worldsim.presets import dynamics_config, get_preset
from worldsim.spaces import ActionSpec
from worldsim.transformer import MASKED, Dynamics, _attention_bf16_cpu, _rotate

LEVELS = (5, 5, 5)


def make_model(spec: ActionSpec, context: int = 6, seed: int = 0) -> Dynamics:
    torch.manual_seed(seed)
    return Dynamics(dynamics_config(get_preset("tiny"), LEVELS, spec, context)).eval()


def moving_world(batch: int, T: int, seed: int = 0, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of a toy world: a random texture on a torus scrolls by the action (left/stay/right)."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, math.prod(LEVELS), (batch, h, w), generator=g)
    actions = torch.randint(0, 3, (batch, T - 1, 1), generator=g)
    frames = [frame]
    for t in range(T - 1):
        frame = torch.stack([f.roll(int(a) - 1, dims=-1) for f, a in zip(frame, actions[:, t, 0])])
        frames.append(frame)
    return torch.stack(frames, 1), actions  # (B, T, h, w), (B, T-1, 1)


def greedy_codes(logits: torch.Tensor) -> torch.Tensor:
    """Per-channel argmax of ``[..., sum(levels)]`` packed into codes ``[...]``."""
    code = torch.zeros(logits.shape[:-1], dtype=torch.long)
    radix = 1
    for i, part in enumerate(logits.split(list(LEVELS), -1)):
        code += part.argmax(-1) * radix
        radix *= LEVELS[i]
    return code


def full_pass(model: Dynamics, codes: torch.Tensor, actions: torch.Tensor):
    B, T = codes.shape[:2]
    level = torch.full((B, T), model.cfg.inference_corruption)
    with torch.no_grad():
        return model.teacher_forced(codes, actions, level, torch.full_like(codes[:, 1:], MASKED))


def object_world(batch: int, T: int, seed: int = 0, h: int = 4, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of a toy world: a 2x2-cell object moves left/stays/moves right on a fixed texture."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.randint(0, 100, (batch, h, w), generator=g)
    pos = torch.randint(0, w // 2, (batch,), generator=g)
    actions = torch.randint(0, 3, (batch, T - 1, 1), generator=g)
    frames = []
    for t in range(T):
        if t:
            pos = (pos + actions[:, t - 1, 0] - 1) % (w // 2)
        f = bg.clone()
        for b in range(batch):
            f[b, :2, 2 * pos[b] : 2 * pos[b] + 2] = 124
        frames.append(f)
    return torch.stack(frames, 1), actions


@pytest.mark.parametrize(
    "heads, rollout, lr",
    [(False, 0.0, 3e-3), (True, 0.0, 3e-3), (True, 0.5, 3e-3)],
    ids=["plain", "stay-gate-and-still-head", "rolled-out-context"],
)
def test_overfits_a_short_sequence_and_predicts_it_greedily(heads: bool, rollout: float, lr: float) -> None:
    # 1e-2 is too high a learning rate for this toy: with the opt-in heads greedy reached
    # 85-89 % after 750 steps, and the plain model 77-99 % of the moved cells depending on
    # float rounding alone (one thread or two, RoPE's rounding). At 3e-3 every variant
    # reaches 100 % (init seeds 0-2, one or two threads).
    spec = ActionSpec("Discrete", (3,))
    torch.manual_seed(0)
    cfg = dynamics_config(get_preset("tiny"), LEVELS, spec, 6, stay_gate=heads, still_head=heads)
    model = Dynamics(replace(cfg, rollout_share=rollout)).train()
    codes, actions = object_world(4, 6)
    rewards, ends = torch.zeros(4, 5), torch.zeros(4, 5, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(750):  # both init seeds 0 and 1 reach >= 99% of cells by 750 steps; 450 was marginal
        out = model(codes, actions, rewards, ends, generator=g)
        first = first if first is not None else float(out.loss.detach())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.loss.detach()) < 0.2 * first
    model.eval()
    out = full_pass(model, codes, actions)
    pred = greedy_codes(model.final_logits(out, codes[:, :-1]))
    ok = pred == codes[:, 1:]
    moved = codes[:, 1:] != codes[:, :-1]  # where the action moved the object
    assert ok.float().mean() > 0.95, f"greedy one-step predictions match only {ok.float().mean():.1%} of cells"
    assert ok[moved].float().mean() > 0.8, "the model does not follow the actions"


def test_block_causal_future_frames_and_actions_do_not_change_the_past() -> None:
    model = make_model(ActionSpec("MultiDiscrete", (3, 2)))
    codes, _ = moving_world(2, 6)
    actions = torch.randint(0, 2, (2, 5, 2))
    base = full_pass(model, codes, actions)
    codes2, actions2 = codes.clone(), actions.clone()
    codes2[:, 4:] = (codes2[:, 4:] + 7) % math.prod(LEVELS)
    actions2[:, 3:] = 1 - actions2[:, 3:]
    changed = full_pass(model, codes2, actions2)
    # Target frame t sees context frames < t and the action that led to it (actions[t-1]).
    assert torch.equal(base.logits[:, :3], changed.logits[:, :3])
    assert torch.equal(base.reward[:, :3], changed.reward[:, :3])
    assert not torch.allclose(base.logits[:, 3:], changed.logits[:, 3:])
    # The frame a target predicts is hidden from it, in every layer: new codes from frame 4 on,
    # with the same actions, leave the predictions of frames 1-4 as they were.
    answer = full_pass(model, codes2, actions)
    assert torch.equal(base.logits[:, :4], answer.logits[:, :4])
    assert not torch.allclose(base.logits[:, 4:], answer.logits[:, 4:])


def test_kv_cache_path_matches_the_full_forward_pass() -> None:
    model = make_model(ActionSpec("MultiDiscrete", (3, 2)))
    codes, _ = moving_world(2, 6, seed=1)
    actions = torch.randint(0, 2, (2, 5, 2))
    full = full_pass(model, codes, actions)
    none = torch.full((2, 1, 2), -1)
    prev = torch.cat([none, actions], 1)  # the action that led to each frame
    lv = model.cfg.inference_corruption
    masked = torch.full_like(codes[:, 0], MASKED)
    with torch.no_grad():
        for t in range(1, 6):
            # Unfused: commit frames 0..t-1, then predict frame t.
            kv = model.append(codes[:, :t], prev[:, :t], torch.tensor(0), lv, None)
            pred, _ = model.predict(masked, actions[:, t - 1], torch.tensor(t), kv)
            torch.testing.assert_close(pred.logits, full.logits[:, t - 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(pred.reward, full.reward[:, t - 1], atol=1e-4, rtol=1e-4)
            # Fused: frame t-1 committed in the same pass; its entries equal the unfused ones.
            kv_old = None if t == 1 else kv[:, :, :, :, : (t - 1) * 16]
            fused, entries = model.predict(
                masked, actions[:, t - 1], torch.tensor(t), kv_old, None, codes[:, t - 1], prev[:, t - 1], lv
            )
            torch.testing.assert_close(fused.logits, full.logits[:, t - 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(entries, kv[:, :, :, :, (t - 1) * 16 :], atol=1e-4, rtol=1e-4)


def test_positions_are_relative_in_time_and_work_on_other_grid_sizes() -> None:
    model = make_model(ActionSpec("Discrete", (3,)))
    codes, actions = moving_world(1, 4, h=6, w=10)  # another aspect ratio than trained on
    lv = model.cfg.inference_corruption
    prev = torch.cat([torch.full((1, 1, 1), -1), actions], 1)
    masked = torch.full_like(codes[:, 0], MASKED)
    with torch.no_grad():
        outs = []
        for t0 in (0, 1000, 4096 * 50 + 3):  # far beyond the time period: taken modulo, exactly
            kv = model.append(codes[:, :3], prev[:, :3], torch.tensor(t0), lv, None)
            outs.append(model.predict(masked, actions[:, 2], torch.tensor(t0 + 3), kv)[0].logits)
    assert outs[0].shape == (1, 6, 10, sum(LEVELS))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-4, rtol=1e-4)


def test_attention_scores_depend_on_the_frame_offset_alone_at_any_frame_index() -> None:
    """A query and a key 3 frames apart score the same at frames 3 and 0 as at any later pair,
    near the end of the time period too (where a world restarted late in a batch's clock
    sits), so such a world dreams as a fresh one does."""
    rope = make_model(ActionSpec("Discrete", (3,))).rope
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 64, 32, generator=g)  # 64 pairs, head size 32 as in the tiny preset
    zero = torch.zeros(64, dtype=torch.long)

    def scores(tq: int, tk: int) -> torch.Tensor:
        cq, sq = rope.angles(torch.full((64,), tq), zero, zero)
        ck, sk = rope.angles(torch.full((64,), tk), zero, zero)
        return (_rotate(q, cq, sq) * _rotate(k, ck, sk)).sum(-1)

    base = scores(3, 0)
    for t0 in (1000, 4000, 4092, 4096 * 7 + 4090, 10**9):
        # fp32 rounding of a 32-term dot product (|score| up to 16) is ~2e-6; time angles
        # computed as t * frequency in fp32 were off by up to ~5e-4 rad at large t, which
        # moved these scores by 1.3e-4 to 2.7e-4. 2e-5 sits between, 10x above the first.
        torch.testing.assert_close(scores(t0 + 3, t0), base, atol=2e-5, rtol=0)


def test_grid_not_a_multiple_of_the_patch_is_refused() -> None:
    model = make_model(ActionSpec("Discrete", (3,)))
    with pytest.raises(ValueError, match="multiple of the patch"):
        model.append(torch.zeros(1, 1, 5, 8, dtype=torch.long), torch.zeros(1, 1, 1, dtype=torch.long), torch.tensor(0), 0.0, None)


def test_stay_gate_starts_neutral_and_its_bonus_goes_to_the_previous_level_in_torch_and_the_sampler() -> None:
    import numpy as np

    from worldsim.sampling import MaskGitSampler, PassOutput
    from worldsim.transformer import add_stay

    spec = ActionSpec("Discrete", (3,))
    torch.manual_seed(0)
    model = Dynamics(dynamics_config(get_preset("tiny"), LEVELS, spec, 6, stay_gate=True)).eval()
    codes, actions = moving_world(2, 4)
    pred = full_pass(model, codes, actions)
    assert pred.stay is not None and pred.stay.shape == (*pred.logits.shape[:-1], len(LEVELS))
    assert torch.equal(model.final_logits(pred, codes[:, :-1]), pred.logits)  # a new gate is zero

    # add_stay puts channel i's bonus on the logit of the previous code's level in channel i
    prev = torch.tensor([[7, 124]])  # levels (5,5,5): 7 = (2, 1, 0), 124 = (4, 4, 4)
    stay = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    out = add_stay(torch.zeros(1, 2, 15), stay, prev, model.levels, model.radix)
    assert out[0, 0].nonzero().flatten().tolist() == [2, 5 + 1, 10 + 0] and out[0, 0, [2, 6, 10]].tolist() == [1.0, 2.0, 3.0]
    assert out[0, 1].nonzero().flatten().tolist() == [4, 9, 14] and out[0, 1, [4, 9, 14]].tolist() == [4.0, 5.0, 6.0]

    # A strong gate makes greedy decoding keep every previous code, in torch and in the sampler alike
    with torch.no_grad():
        model.stay_head.bias.fill_(1e3)
    pred = full_pass(model, codes, actions)
    assert torch.equal(greedy_codes(model.final_logits(pred, codes[:, :-1])), codes[:, :-1])
    prev_np = codes[:, 0].numpy()
    sampler = MaskGitSampler(LEVELS, model.cfg.patch, 2, 0.0, np.random.default_rng(0))
    logits, stay_np = pred.logits[:, 0].numpy(), pred.stay[:, 0].numpy()
    sample = sampler.generate(lambda c: PassOutput(logits, np.zeros(2, np.float32), np.zeros(2, np.float32), stay_np), 2, 8, 8, prev_np)
    assert np.array_equal(sample.codes, prev_np)
    without = sampler.generate(lambda c: PassOutput(logits, np.zeros(2, np.float32), np.zeros(2, np.float32), stay_np), 2, 8, 8)
    assert np.array_equal(without.codes, greedy_codes(pred.logits[:, 0]).numpy())  # no previous frame: no bonus


def test_still_head_learns_which_actions_leave_the_frame_unchanged() -> None:
    spec = ActionSpec("Discrete", (3,))
    torch.manual_seed(0)
    model = Dynamics(dynamics_config(get_preset("tiny"), LEVELS, spec, 6, still_head=True)).train()
    codes, actions = moving_world(8, 6, seed=3)  # action 1 scrolls by 0: the frame stays the same
    still = (codes[:, 1:] == codes[:, :-1]).flatten(2).all(-1)
    assert torch.equal(still, actions[..., 0] == 1)
    rewards, ends = torch.zeros(8, 5), torch.zeros(8, 5, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        out = model(codes, actions, rewards, ends, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert "still_bce" in out.logs and out.logs["still_bce"] < 0.2
    fresh_codes, fresh_actions = moving_world(8, 6, seed=4)  # unseen textures and actions
    pred = full_pass(model.eval(), fresh_codes, fresh_actions)
    assert torch.equal(pred.still_logit > 0, fresh_actions[..., 0] == 1)


def test_rolled_out_context_is_the_models_own_predictions_chained_pass_after_pass() -> None:
    spec = ActionSpec("Discrete", (3,))
    torch.manual_seed(0)
    base = dynamics_config(get_preset("tiny"), LEVELS, spec, 6, stay_gate=True)
    model = Dynamics(replace(base, rollout_share=1.0, rollout_passes=2, rollout_temperature=0.0)).train()
    with torch.no_grad():  # a gate that is not neutral, so the passes must apply it as generation does
        model.stay_head.bias.fill_(0.5)
    codes, actions = moving_world(3, 5, seed=1)
    level = torch.full((3, 5), 0.15)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    ctx, lv = model._rolled_out(codes, level, actions, None, rand)

    # Greedy by hand: pass 1 predicts frames 1..4 from the recorded context, pass 2 from pass 1's.
    inf = model.cfg.inference_corruption
    lv_ref = torch.cat([level[:, :1], torch.full((3, 4), inf)], 1)
    expect = codes
    for _ in range(2):
        with torch.no_grad():
            pred = model.teacher_forced(expect, actions, lv_ref, torch.full_like(codes[:, 1:], MASKED))
        expect = torch.cat([codes[:, :1], greedy_codes(model.final_logits(pred, expect[:, :-1]))], 1)
    assert torch.equal(ctx, expect)
    assert torch.equal(lv, lv_ref)
    assert torch.equal(ctx[:, 0], codes[:, 0]) and not torch.equal(ctx[:, 1:], codes[:, 1:])

    # Validation (eval mode) and share 0 train on the recorded context: the same loss either way
    plain = Dynamics(base).train()
    plain.load_state_dict(model.state_dict())
    rewards, ends = torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bool)
    losses = []
    for m in (model.eval(), plain):
        losses.append(float(m(codes, actions, rewards, ends, generator=torch.Generator().manual_seed(5)).loss.detach()))
    assert losses[0] == losses[1]
    trained = float(model.train()(codes, actions, rewards, ends, generator=torch.Generator().manual_seed(5)).loss.detach())
    assert trained != losses[0]  # in training the rolled-out context is used


@pytest.mark.parametrize("per_world", [False, True])
def test_bf16_cpu_attention_matches_the_reference_kernel(per_world: bool) -> None:
    g = torch.Generator().manual_seed(0)
    B, H, S, Sk, dh = 3, 2, 8, 40, 16
    q, k, v = (torch.randn(B, H, n, dh, generator=g) for n in (S, Sk, Sk))
    mask = torch.rand(B, 1, S, Sk, generator=g) > 0.3 if per_world else torch.rand(S, Sk, generator=g) > 0.3
    mask[..., -1] = True  # every query sees a key, as in the runtime's passes
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.inference_mode():
        got = _attention_bf16_cpu(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask).float()
    assert (got - want).abs().max() < 0.03


def test_change_weight_weighs_the_cells_that_changed_in_training_only() -> None:
    """With ``change_weight`` w the training loss is a mean over masked cells in which a cell
    whose code changed counts w times a kept one (rescaled to the plain mean's scale); the
    validation loss stays the plain one, so runs with and without it compare."""
    spec = ActionSpec("Discrete", (3,))
    codes, actions = object_world(4, 5)  # the object moves or stays: a few cells change, most keep
    rewards, done = torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool)
    plain, heavy = make_model(spec), make_model(spec)
    heavy.cfg = replace(heavy.cfg, change_weight=4.0)

    def loss(m: Dynamics, train: bool) -> float:
        m.train(train)
        with torch.no_grad():
            return m(codes, actions, rewards, done, generator=torch.Generator().manual_seed(1)).logs["ce"]

    assert loss(heavy, False) == loss(plain, False)
    assert loss(heavy, True) != pytest.approx(loss(plain, True), rel=1e-3)
    same = make_model(spec)
    same.cfg = replace(same.cfg, change_weight=1.0)
    assert loss(same, True) == loss(plain, True)


def test_spatial_embedding_is_built_once_per_grid_and_still_trains_after_inference(monkeypatch) -> None:
    """Generation passes reuse the (row, column) table instead of rebuilding it every pass: the
    same values, built once per grid size, and a table first built in inference mode does not
    keep the model from training afterwards."""
    model = make_model(ActionSpec("MultiDiscrete", (3, 2)))
    built = []
    table = model._spatial_table
    monkeypatch.setattr(model, "_spatial_table", lambda gh, gw, dev: built.append((gh, gw)) or table(gh, gw, dev))
    codes, _ = moving_world(2, 3, seed=1)
    actions = torch.randint(0, 2, (2, 2))
    masked = torch.full_like(codes[:, 0], MASKED)
    with torch.inference_mode():
        for t in range(1, 4):
            model.predict(masked, actions, torch.tensor(t), None, None, codes[:, t - 1], actions, 0.05)
        model.predict(torch.full((2, 4, 6), MASKED), actions, torch.tensor(4), None)  # another grid
    assert built == [(4, 4), (2, 3)]
    assert torch.equal(model._spatial(4, 4, torch.device("cpu")), table(4, 4, torch.device("cpu")))
    model.train()
    out = model(codes, torch.randint(0, 2, (2, 2, 2)), torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))
    out.loss.backward()  # would raise if the table were an inference tensor saved for backward
    assert built == [(4, 4), (2, 3)]


def test_spatial_tables_are_let_go_of_when_the_model_moves_and_kept_for_a_few_grids() -> None:
    """A table kept for the old device would hold its memory after ``.to()`` (GPU memory after
    a move to the CPU); a model run at many frame sizes keeps the latest few grids only."""
    from worldsim.transformer import SPATIAL_TABLES

    model = make_model(ActionSpec("MultiDiscrete", (3, 2)))
    cpu = torch.device("cpu")
    for g in range(1, SPATIAL_TABLES + 3):
        model._spatial(g, 2, cpu)
    assert list(model._spatial_cache) == [(g, 2, "cpu") for g in range(3, SPATIAL_TABLES + 3)]
    assert torch.equal(model._spatial(1, 2, cpu), model._spatial_table(1, 2, cpu))  # built again, the same
    model.to("meta")
    assert not model._spatial_cache
    assert model._spatial(4, 4, torch.device("meta")).device.type == "meta"
