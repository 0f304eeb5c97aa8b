"""ruff, with the project's settings (pyproject.toml), finds nothing and the code is formatted:
the lint step of CI runs inside the README's test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_finds_nothing():
    out = _ruff("check", "--output-format", "concise", ".")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]


def test_the_code_is_formatted():
    out = _ruff("format", "--check", ".")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
