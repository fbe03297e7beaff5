"""The package as pip builds it: metadata without deprecated fields, dependency floors that work."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_metadata_builds_without_deprecation_warnings(tmp_path):
    # setuptools >= 77 (what pyproject.toml's build-system asks pip for) warned that a TOML
    # table `project.license` stops building after 2027-02-18.
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than the build-system's")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_text((ROOT / name).read_text())
    for package in ("worldsim", "envs", "agents", "export"):
        (src / package).mkdir()
        (src / package / "__init__.py").write_text("")
    code = (
        "import sys; from setuptools import build_meta as b; "
        "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "deprecated" not in r.stderr, r.stderr[-2000:]
    metadata = (tmp_path / r.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: MIT" in metadata


def test_gymnasium_floor_has_what_the_vector_envs_import():
    # gymnasium 1.0 satisfied the old floor (>=1.0) but has no gymnasium.vector.AutoresetMode,
    # so `import envs.blockworld` failed there with an ImportError.
    floor = re.search(r'"gymnasium>=([0-9.]+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert tuple(int(p) for p in floor.split(".")) >= (1, 1)
    assert "AutoresetMode" in (ROOT / "envs" / "blockworld" / "vector.py").read_text()


def test_a_folder_that_hides_a_worldsim_package_is_named_at_import(tmp_path):
    """An RL project's own ``envs/`` beside its script hides WorldSim's ``envs`` package."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    clean = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import worldsim"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("")
    hidden = subprocess.run([sys.executable, "-c", "import worldsim"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert hidden.returncode == 0
    assert "package 'envs' is hidden by" in hidden.stderr and str(tmp_path / "envs") in hidden.stderr
    assert "'agents'" not in hidden.stderr


def test_help_and_dir_show_the_public_api():
    """``load`` is imported lazily; dir(), tab completion and help(worldsim) still show it."""
    import pydoc

    import worldsim

    assert set(worldsim.__all__) <= set(dir(worldsim))
    assert all(getattr(worldsim, name) is not None for name in worldsim.__all__)
    text = pydoc.render_doc(worldsim, renderer=pydoc.plaintext)
    assert "load(checkpoint" in text and "Load a world model checkpoint" in text
    assert "worldsim.load(" in text  # the module docstring says how to start
