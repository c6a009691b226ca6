"""LEANTUNE_REQUIRE_ALL=1 (what CI and `make test` set): a test that skips for a missing dependency fails instead."""

import os
import subprocess
import sys
from pathlib import Path


def test_a_skip_fails_when_every_dependency_is_required(tmp_path):
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_needs_a_library.py").write_text(
        "import pytest\n\ndef test_it():\n    pytest.importorskip('a_library_that_is_not_installed')\n")

    def pytest_with(value: str):
        env = {**os.environ, "LEANTUNE_REQUIRE_ALL": value}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=tmp_path)

    required = pytest_with("1")
    assert required.returncode == 1 and "allows no skips" in required.stdout and "1 failed" in required.stdout
    relaxed = pytest_with("0")
    assert relaxed.returncode == 0 and "1 skipped" in relaxed.stdout
