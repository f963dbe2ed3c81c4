"""README's first command: the migration demo runs and checks itself."""

from __future__ import annotations

import subprocess

import pytest
from conftest import LIVEMIG


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_demo_migrates_and_checks(transport: str) -> None:
    result = subprocess.run(["livemig", "demo", "--transport", transport],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Migration status" in result.stdout and "completed" in result.stdout
    assert "pages consistent" in result.stdout
    assert "keeps writing: OK" in result.stdout


def test_demo_help_lists_the_knobs() -> None:
    out = subprocess.run(["livemig", "demo", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for knob in ("--accel", "--ram", "--bandwidth", "--downtime", "--transport"):
        assert knob in out
