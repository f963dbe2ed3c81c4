"""README's first command: the migration demo runs and checks itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
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
        assert "postcopy: blocked" in result.stdout
    assert "pages consistent" in result.stdout
    assert "keeps writing: OK" in result.stdout


def test_demo_help_lists_the_knobs() -> None:
    out = subprocess.run([TOOL, "demo", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for knob in ("--accel", "--ram", "--bandwidth", "--downtime", "--transport", "--postcopy"):
        assert knob in out


def _labs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("livemig-lab-*"))


def test_demo_bandwidth_takes_qemu_sizes() -> None:
    from livemig.cli.tool import _bandwidth

    assert _bandwidth("10M") == 10 << 20
    assert _bandwidth("1e9") == 10**9
    assert _bandwidth("1000000") == 10**6
    bad = subprocess.run([TOOL, "demo", "--bandwidth", "lots"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "'lots' is not a bandwidth" in bad.stderr


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_demo_that_cannot_converge_says_why_and_gives_up() -> None:
    """1 MB/s against a guest that dirties far more: a hint while it runs,
    then --timeout cancels it; no lab folder is left behind."""
    before = _labs()
    result = subprocess.run([TOOL, "demo", "--bandwidth", "1M", "--downtime", "0",
                             "--timeout", "8"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())   # rich wraps at 80 columns
    assert "not converging: the guest dirties" in out and "--postcopy" in out, out
    assert "gave up after --timeout 8 s" in out, out
    assert "Traceback" not in result.stdout + result.stderr
    assert _labs() <= before


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hang-up"])
def test_demo_interrupted_cleans_up_in_one_line(signum: int) -> None:
    before = _labs()
    demo = subprocess.Popen([TOOL, "demo", "--bandwidth", "1M"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any((lab / "source.serial").exists() for lab in _labs() - before):
            assert time.monotonic() < deadline and demo.poll() is None, "the demo never began"
            time.sleep(0.05)
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "demo interrupted" in out
    assert _labs() <= before
