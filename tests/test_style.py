"""The tree stays ruff-clean: lint and format (the rules are in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["openovis", "tests", "benchmarks"]

pytestmark = pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    done = subprocess.run(["ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"`ruff {' '.join(args)}` found problems:\n{done.stdout}{done.stderr}"
