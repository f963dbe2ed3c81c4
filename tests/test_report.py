"""livemig report and demo --json/--png: a run saved as data and drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LIVEMIG
from PIL import Image

TOOL = str(Path(sys.executable).parent / "livemig")
STORED = Path(__file__).parent / "data" / "run-demo.json"


def _picture_ok(path: Path, min_width: int = 1000) -> None:
    """It opens, it is big enough to read, and it is not blank."""
    with Image.open(path) as image:
        assert image.size[0] >= min_width and image.size[1] >= 600, image.size
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10, "the picture is (nearly) one colour"
    assert (pixels < 128).mean() > 0.01, "almost nothing is drawn"


def test_report_draws_a_stored_run(tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    result = subprocess.run([TOOL, "report", str(STORED), "--png", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _picture_ok(out)


def test_report_puts_runs_side_by_side(tmp_path: Path) -> None:
    data = json.loads(STORED.read_text())
    other = dict(data["runs"][0], label="QEMU", vmm="qemu-system-x86_64")
    data["runs"].append(other)
    both = tmp_path / "both.json"
    both.write_text(json.dumps(data))
    out = tmp_path / "both.png"
    assert subprocess.run([TOOL, "report", str(both), "--png", str(out)],
                          capture_output=True, timeout=120).returncode == 0
    _picture_ok(out, min_width=1400)


@pytest.mark.parametrize("text", ["not json", '{"format": "other"}',
                                  '{"format": "livemig-runs/1", "runs": []}'])
def test_report_refuses_what_is_not_a_run(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = subprocess.run([TOOL, "report", str(bad), "--png", str(tmp_path / "x.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.startswith("livemig report: ")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_demo_saves_and_draws_its_run(tmp_path: Path) -> None:
    """The saved timeline ends on the final query-migrate answer, and the
    guest's pause lies inside the run."""
    run_json, run_png = tmp_path / "run.json", tmp_path / "run.png"
    result = subprocess.run([TOOL, "demo", "--json", str(run_json), "--png", str(run_png)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(run_json.read_text())["runs"][0]
    last, final = run["timeline"][-1], run["result"]
    assert last["status"] == final["status"] == "completed"
    assert last["transferred"] == final["ram"]["transferred"]
    assert last["dirty-sync-count"] == final["ram"]["dirty-sync-count"]
    assert [s["t"] for s in run["timeline"]] == sorted(s["t"] for s in run["timeline"])
    stop, resume = run["pause"]
    assert 0 <= stop <= resume <= last["t"] + 5
    _picture_ok(run_png)
