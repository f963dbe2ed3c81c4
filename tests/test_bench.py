"""livemig bench: one scenario on livemig and QEMU in turn, medians,
every run kept in a JSON that livemig report draws."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import LIVEMIG, QEMU
from rich.console import Console

from livemig.cli.tool import _param
from livemig.lab import LabError, VmLauncher, VmmKind
from livemig.lab.bench import Options, _Pair, bench

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
    def cannot(*_args: object) -> str:
        return "has no multifd"

    console = Console(record=True, width=120)
    assert bench("multifd", ["livemig"], runs=2, console=console, run=cannot) == 0
    text = console.export_text()
    assert "livemig: multifd not supported: has no multifd" in text
    console = Console(record=True, width=120)
    assert bench("warp", ["livemig"], console=console) == 2
    assert "unknown scenario warp" in console.export_text()


def _runs_of(path: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"]
    return runs


def _on_both(tmp_path: Path, scenario: str, opts: Options | None = None
             ) -> tuple[str, list[dict[str, Any]]]:
    """One run of ``scenario`` on livemig and QEMU: what it printed, and the runs."""
    out = tmp_path / f"{scenario}.json"
    console = Console(record=True, width=140)
    assert bench(scenario, ["livemig", "qemu-system-x86_64"], opts, runs=1, json_path=out,
                 console=console) == 0
    return console.export_text(), _runs_of(out)


@pytest.mark.slow
@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_bench_recovery_cuts_the_link_and_both_vmms_recover(tmp_path: Path) -> None:
    text, runs = _on_both(tmp_path, "recovery")
    assert "paused by the cut" in text
    assert [r["label"] for r in runs] == ["livemig", "qemu-system-x86_64"]
    for run in runs:
        statuses = [s["status"] for s in run["timeline"]]
        # The relay's cut paused it, recovery resumed it, and it completed.
        paused = statuses.index("postcopy-paused")
        assert "postcopy-active" in statuses[:paused]
        assert "postcopy-active" in statuses[paused:] or "postcopy-recover" in statuses[paused:]
        assert statuses[-1] == "completed"
        # The final rate is the whole migration's, postcopy too (QEMU's meaning).
        assert run["result"]["ram"]["mbps"] > 0
        assert run["extra"]["paused-ms"] > 0
        assert run["extra"]["blocktime-ms"] >= 0


@pytest.mark.slow
@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_bench_file_saves_and_restores_on_both_vmms(tmp_path: Path) -> None:
    text, runs = _on_both(tmp_path, "file")
    assert "restore" in text
    for run in runs:
        assert run["result"]["status"] == "completed"
        assert run["extra"]["restore-ms"] > 0
        # A stream file holds what was sent, pass after pass (the guest runs
        # on while it is saved): at least the 100 MiB the guest wrote.
        size, sent = run["extra"]["file-bytes"], run["result"]["ram"]["transferred"]
        assert size > 90 << 20
        assert abs(size - sent) < 0.1 * sent, (size, sent)
        assert run["pause"] is None


@pytest.mark.slow
@pytest.mark.skipif(LIVEMIG is None, reason="needs livemig")
def test_bench_postcopy_of_a_workload_guest_over_tcp_draws_its_block_time(
        tmp_path: Path) -> None:
    out, png = tmp_path / "postcopy.json", tmp_path / "postcopy.png"
    result = subprocess.run([TOOL, "bench", "postcopy", "--vmm", "livemig", "--runs", "1",
                             "--guest", "dirty", "--wss", "32", "--rate", "40",
                             "--transport", "tcp", "--bandwidth", "100M", "--json", str(out)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "postcopy block time" in result.stdout
    options = json.loads(out.read_text())["options"]
    assert options["transport"] == "tcp" and options["guest"]["dirty"]["wss_mib"] == 32
    run = _runs_of(out)[0]
    blocked = [s["postcopy-blocktime"] for s in run["timeline"] if "postcopy-blocktime" in s]
    assert blocked and blocked == sorted(blocked)   # sampled from the destination, growing
    assert run["extra"]["blocktime-ms"] >= blocked[-1]
    # The VMM-neutral figure: the vCPU's sleep after the switch, from /proc.
    assert "vCPU asleep after the switch" in result.stdout
    assert 0 <= run["extra"]["vcpu-asleep-ms"] <= run["extra"]["postcopy-ms"]
    assert subprocess.run([TOOL, "report", str(out), "--png", str(png)],
                          timeout=120).returncode == 0
    assert png.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_bench_filled_guest_over_tls_with_multifd(tmp_path: Path) -> None:
    """A guest that never runs, its RAM all written over qtest, over TLS with
    two multifd channels: both VMMs move all of it (the engine checks the
    destination's RAM at its start, middle and end)."""
    opts = Options(ram="128M", filled=True, tls=True, bandwidth=100_000_000_000,
                   params=(("multifd-channels", 2),))
    text, runs = _on_both(tmp_path, "multifd", opts)
    assert "RAM moved per second" in text
    for run in runs:
        assert run["pause"] is None                   # it never ran: no STOP, no RESUME
        assert run["extra"]["ram-bytes-per-s"] > 10 << 20
        assert run["result"]["ram"]["transferred"] >= 128 << 20
    assert json.loads((tmp_path / "multifd.json").read_text())["options"]["tls"] is True


@pytest.mark.slow
@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_bench_slow_link_counts_the_compressed_bytes(tmp_path: Path) -> None:
    opts = Options(bandwidth=50_000_000, downtime=2500, link_rate=50_000_000,
                   caps=("multifd",), params=(("multifd-channels", 2),
                                              ("multifd-compression", "zstd")))
    for run in _on_both(tmp_path, "precopy", opts)[1]:
        # 100 MiB of pages with one byte each crossed the relay as a few MB.
        assert 0 < run["extra"]["link-bytes"] < 20e6, run["extra"]


@pytest.mark.slow
@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_bench_file_with_mapped_ram_bounds_the_image(tmp_path: Path) -> None:
    opts = Options(ram="256M", filled=True, caps=("mapped-ram",), save_dir=str(tmp_path))
    text, runs = _on_both(tmp_path, "file", opts)
    assert "qemu-system-x86_64: file not supported: has no mapped-ram" in text
    [run] = runs
    assert run["label"] == "livemig"
    assert (256 << 20) <= run["extra"]["file-bytes"] <= (258 << 20)
    assert not list(tmp_path.glob("livemig-bench-*.mig"))   # the image is removed


def test_param_values_take_json_types() -> None:
    assert _param("multifd-channels=2") == ("multifd-channels", 2)
    assert _param("x-flag=on") == ("x-flag", True)
    assert _param("multifd-compression=zstd") == ("multifd-compression", "zstd")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        _param("multifd-channels")


class _WrongRam:
    """A destination whose RAM reads as zeros: what a broken migration leaves."""

    def cmd(self, name: str, **_args: object) -> dict[str, object]:
        return {}

    def pmem(self, address: int, size: int) -> bytes:
        return bytes(size)


def test_the_ram_check_fails_a_wrong_destination(tmp_path: Path) -> None:
    lab = VmLauncher(tmp_path)
    pair = _Pair(lab, VmmKind("livemig", "livemig-system-x86_64", "tcg"),
                 Options(filled=True))
    pair.ram_bytes = 1 << 20
    with pytest.raises(LabError, match="the destination's RAM is wrong at 0x0, 0x80000"):
        pair.check(_WrongRam())  # type: ignore[arg-type]


def test_a_run_that_never_switched_is_told_apart() -> None:
    """A postcopy run that completed by precopy first must not count as
    a postcopy with a block time of 0 (QEMU at a high max-bandwidth)."""
    from livemig.lab.bench import entered_postcopy

    precopy_only = [{"t": 0.0, "status": "active"}, {"t": 0.1, "status": "completed"}]
    assert not entered_postcopy(precopy_only, {"ram": {"postcopy-bytes": 0}})
    switched = [*precopy_only[:1], {"t": 0.05, "status": "postcopy-active"},
                {"t": 0.1, "status": "completed"}]
    assert entered_postcopy(switched, {"ram": {}})
    # A postcopy too short for the poller still shows in the bytes it sent.
    assert entered_postcopy(precopy_only, {"ram": {"postcopy-bytes": 4096}})
