"""livemig bench: one scenario on livemig and QEMU in turn, medians,
every run kept in a JSON that livemig report draws."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LIVEMIG, QEMU
from rich.console import Console

from livemig.lab.bench import bench

TOOL = str(Path(sys.executable).parent / "livemig")


@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_bench_precopy_on_livemig_and_qemu(tmp_path: Path) -> None:
    out = tmp_path / "precopy.json"
    result = subprocess.run([TOOL, "bench", "precopy", "--vmm", "livemig", "--vmm",
                             "qemu-system-x86_64", "--runs", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "livemig / qemu-system-x86_64" in result.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [r["label"] for r in runs] == ["livemig", "qemu-system-x86_64"]
    for run in runs:
        last, final = run["timeline"][-1], run["result"]
        assert final["status"] == last["status"] == "completed"
        # The JSON's figures are query-migrate's final answer.
        assert last["transferred"] == final["ram"]["transferred"]
        assert final["total-time"] > 0 and final["ram"]["transferred"] > 100 << 20
        stop, resume = run["pause"]
        assert 0 < stop <= resume
    png = tmp_path / "precopy.png"
    assert subprocess.run([TOOL, "report", str(out), "--png", str(png)],
                          timeout=120).returncode == 0
    assert png.stat().st_size > 10_000


def test_unsupported_scenarios_are_reported_not_failed() -> None:
    console = Console(record=True, width=120)
    assert bench("recovery", ["livemig"], console=console) == 0
    assert "not run by livemig bench yet" in console.export_text()

    def cannot(*_args: object) -> str:
        return "has no multifd"

    console = Console(record=True, width=120)
    assert bench("multifd", ["livemig"], runs=2, console=console, run=cannot) == 0
    text = console.export_text()
    assert "livemig: multifd not supported: has no multifd" in text
    assert bench("warp", ["livemig"], console=Console(record=True)) == 2
