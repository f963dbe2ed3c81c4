"""README's first command: the migration demo runs and checks itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LIVEMIG

TOOL = str(Path(sys.executable).parent / "livemig")  # the venv's console script


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
@pytest.mark.parametrize("extra", [["--transport", "unix"], ["--transport", "tcp"],
                                   ["--postcopy"]], ids=["unix", "tcp", "postcopy"])
def test_demo_migrates_and_checks(extra: list[str]) -> None:
    result = subprocess.run([TOOL, "demo", *extra], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Migration status" in result.stdout and "completed" in result.stdout
    if "--postcopy" in extra:
        assert "postcopy request count" in result.stdout
        assert "postcopy-blocktime" in result.stdout
    assert "pages consistent" in result.stdout
    assert "keeps writing: OK" in result.stdout


def test_demo_help_lists_the_knobs() -> None:
    out = subprocess.run([TOOL, "demo", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for knob in ("--accel", "--ram", "--bandwidth", "--downtime", "--transport", "--postcopy"):
        assert knob in out
