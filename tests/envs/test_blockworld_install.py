"""BlockWorld as an installed package meets it: numba's kernel cache where nothing is writable."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not hasattr(numba.config, "CACHE_LOCATOR_CLASSES"), reason="numba before NUMBA_CACHE_LOCATOR_CLASSES"
)
def test_the_engine_imports_where_numba_has_no_folder_to_cache_in():
    # A read-only install run by a user whose home is read-only too: numba finds no cache
    # folder. Only the zip locator is left to numba here, which answers for no folder.
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    code = "import gymnasium, worldsim; gymnasium.make('worldsim/BlockWorld-v0'); print('made')"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["made"]
    assert "set NUMBA_CACHE_DIR to a writable folder" in r.stderr
