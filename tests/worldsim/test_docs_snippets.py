"""Every ```python block in the README and docs/ runs as a reader would copy it.

Each block runs in a folder that holds the files the docs name as the reader's own:
``model.safetensors`` and ``dyn.safetensors`` (the shipped model), the ``data/bw20k`` recording
of docs/recording.md's quick start and ``rollout.msgpack`` (both tiny). Blocks that measure for
minutes run here with the smaller numbers of ``SMALLER``; names a block leaves to the reader
(``frames``, ``actions``) come from ``GIVEN``; a few stated claims are checked after a block
runs (``CLAIMS``). A block marked ``<!-- snippet: skip, why -->`` on the line before it is only
compiled and its imports run, so a renamed module or name still fails here.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from worldsim.runtime import DEFAULT_CHECKPOINT
from worldsim.sampling import MaskGitSampler

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"^(?P<marker>[ \t]*<!--[^\n]*-->\n)?(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^[ \t]*```",
    re.M | re.S,
)
SKIP = re.compile(r"<!-- snippet: skip, (?P<why>[^>]+?) -->")


class Block(NamedTuple):
    page: str
    line: int
    code: str
    skip: str | None  # why it is only compiled


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            skip = SKIP.search(m.group("marker") or "")
            line = text.count("\n", 0, m.start("indent")) + 1
            code = textwrap.dedent(m.group("body"))
            found.append(Block(page.name, line, code, skip and skip.group("why")))
    return found


BLOCKS = _blocks()

# (page, text that picks the block) -> (old, new) replacements: the same code, smaller numbers.
SMALLER: dict[tuple[str, str], list[tuple[str, str]]] = {
    # 32,000 explorer steps and 6,000 updates: minutes
    ("eval.md", "train_idm("): [
        ("32000", "1000"),
        ("4000", "500"),
        ("train_steps=6000", "train_steps=2"),
    ],
    # a 2,000-step dream rollout
    ("model.md", "STABILITY_SEED_BASE + w"): [("2000", "20")],
    # 8 worlds by 2,000 steps: the freeze check
    ("model.md", "range(777, 785)"): [("2000", "20")],
    # 20 worlds by 36 steps, three guidance scales
    ("model.md", "guidance=g"): [
        ("context_frames, 36", "context_frames, 3"),
        ("range(20)", "range(2)"),
    ],
    # 3,600 explorer steps
    ("model.md", "def slide("): [("range(6)", "range(2)")],
    # 20 worlds
    ("model.md", "teacher_forced("): [("range(20)", "range(2)")],
    # a timing, 150 steps of one world and 20 of 64, three times
    ("model.md", "ranked_moves=r"): [
        ("((1, 150), (64, 20))", "((1, 2), (2, 1))"),
        ("range(3)", "range(1)"),
    ],
    # 64 worlds
    ("model.md", "MaskGitSampler._choose = choose"): [("range(64)", "range(2)")],
    # 64 dream worlds
    ("dream.md", "num_envs=64"): [("num_envs=64", "num_envs=2")],
}

# (page, text that picks the block) -> what it leaves to the reader: a prompt for the shipped model.
_PROMPT = "B = 2\nframes = np.zeros((B, 4, 64, 64, 3), np.uint8)\nactions = np.zeros((B, 3, 8), np.int64)\n"
GIVEN: dict[tuple[str, str], str] = {
    ("model.md", "model.prompt(frames, actions)"): _PROMPT,
    ("onnx.md", "model.prompt(frames, actions)"): _PROMPT
    + "actions_now = np.zeros((B, 8), np.int64)\n",
}

# (page, text that picks the block) -> what its comments state, as an expression over its names.
CLAIMS: dict[tuple[str, str], str] = {
    ("README.md", "out.frames, out.reward, out.done"): "out.frames.dtype == np.uint8 and out.frames.shape == (1, 64, 64, 3)"
    " and out.reward.dtype == np.float32 and out.reward.shape == (1,) and out.done.dtype == bool and out.done.shape == (1,)",
    ("model.md", "out.done     # bool [B]"): "out.frames.dtype == np.uint8 and out.frames.shape == (B, 64, 64, 3)"
    " and out.reward.dtype == np.float32 and out.reward.shape == (B,) and out.done.dtype == bool and out.done.shape == (B,)",
    ("dream.md", "DreamEnv.reset(seed=0 + i)"): "list(info['engine_seed']) == [0, 1]",
    ("blockworld.md", "obs: uint8 (64, 64, 3)"): "obs.dtype == np.uint8 and obs.shape == (64, 64, 3)",
    ("recording.md", "WindowDataset("): "batch.frames.dtype == np.uint8 and batch.frames.shape == (32, 16, 64, 64, 3)"
    " and batch.actions.dtype == np.int64 and batch.actions.shape == (32, 15, 8)",
    ("recording.md", "decode_frame("): "frames.shape == (20, 64, 64, 3) and actions.shape == (20, 8)",
}  # fmt: skip


def _picked(table: dict[tuple[str, str], object], block: Block) -> list[object]:
    return [v for (page, key), v in table.items() if page == block.page and key in block.code]


def test_every_table_entry_picks_one_block_and_changes_it() -> None:
    """A stale entry (a block rewritten, a number changed) fails here instead of going quiet."""
    assert len(BLOCKS) >= 15  # the README and docs/ hold that many Python examples
    bad = []
    for table in (SMALLER, GIVEN, CLAIMS):
        for page, key in table:
            hits = [b for b in BLOCKS if b.page == page and key in b.code]
            if len(hits) != 1:
                bad.append(f"{page}: {key!r} picks {len(hits)} blocks")
    for (page, key), subs in SMALLER.items():
        for block in (b for b in BLOCKS if b.page == page and key in b.code):
            bad += [
                f"{page}: {old!r} is not in the block of {key!r}"
                for old, _ in subs
                if old not in block.code
            ]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the files the docs' blocks read."""
    from worldsim.cli import main

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("no model shipped (make model installs one)")
    root = tmp_path_factory.mktemp("snippets")
    for name in ("model.safetensors", "dyn.safetensors"):
        (root / name).symlink_to(DEFAULT_CHECKPOINT)
    for agent, steps, out in (("explorer", 40, "data/bw20k"), ("random", 20, "rollout.msgpack")):
        args = ["--env", "worldsim/BlockWorld-v0", "--agent", agent, "--steps", str(steps)]
        assert (
            main(["record", *args, "--num-envs", "1", "--seed", "0", "--out", str(root / out)]) == 0
        )
    return root


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.page}:{b.line}")
def test_block_runs(block: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = block.code
    name = f"{block.page}:{block.line}"
    tree = compile(code, name, "exec", ast.PyCF_ONLY_AST)
    if block.skip:
        imports = ast.Module(
            [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], []
        )
        exec(compile(imports, name, "exec"), {})
        return
    if 'backend="onnx"' in code and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs onnxruntime (pip install 'worldsim[cpu]')")
    for subs in _picked(SMALLER, block):
        for old, new in subs:
            code = code.replace(old, new)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WORLDSIM_ONNX_CACHE", str(workdir / "onnx-cache"))
    # model.md's expected-value block patches the sampler for its session; put it back after
    monkeypatch.setattr(MaskGitSampler, "_choose", MaskGitSampler._choose)
    names: dict = {"__name__": "__snippet__"}
    exec(compile("import numpy as np\n" + "".join(_picked(GIVEN, block)), "<given>", "exec"), names)
    exec(compile(code, name, "exec"), names)
    for claim in _picked(CLAIMS, block):
        assert eval(claim, names), f"{name}: its comments state {claim}"
