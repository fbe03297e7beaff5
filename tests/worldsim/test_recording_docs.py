"""The reading example in docs/recording.md runs as printed, with msgpack and numpy alone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.worldsim.toy_env import record_toy
from worldsim.recording import RecordingReader

DOC = Path(__file__).resolve().parents[2] / "docs" / "recording.md"


def _snippet() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- snippet: read-recording.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/recording.md lost its read-recording snippet"
    return match.group(1)


def test_docs_snippet_reads_frames_actions_and_rewards(tmp_path, capsys):
    path = tmp_path / "rollout.msgpack"
    record_toy(path, 3, seed=11)
    code = _snippet()
    assert len(code.strip().splitlines()) <= 20
    imports = {m for m in re.findall(r"^(?:import|from) (\w+)", code, re.M)}
    assert imports <= {"zlib", "msgpack", "numpy"}
    namespace: dict = {}
    exec(compile(code.replace('"rollout.msgpack"', repr(str(path))), str(DOC), "exec"), namespace)

    steps = [r for r in RecordingReader(path) if r.kind == "step"]
    np.testing.assert_array_equal(namespace["frames"], np.stack([r.image() for r in steps]))
    np.testing.assert_array_equal(namespace["actions"], np.stack([r.action for r in steps]))
    np.testing.assert_allclose(namespace["rewards"], [r.reward for r in steps])
    assert capsys.readouterr().out.startswith("ToyImage-v0 ")
