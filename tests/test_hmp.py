"""HMP through human-monitor-command: the migration ``info`` views and
commands, run on livemig and on QEMU 7.2 with the same lines, compared
line by line (values may differ; lines, labels and the words of errors may
not, except where noted)."""

from __future__ import annotations

import pytest
from conftest import LIVEMIG, QEMU
from migration_helpers import wait_for_status

from livemig.lab import Vm, VmLauncher, VmmKind, wait_until

# Lines whose presence depends on a value (QEMU prints them when non-zero).
OPTIONAL = {"dirty pages rate", "postcopy request count", "precopy ram", "downtime ram",
            "postcopy ram", "expected downtime", "downtime"}

ERRORS = [
    "migrate_set_capability bogus on",
    "migrate_set_capability events maybe",
    "migrate_set_parameter bogus 1",
    "migrate_set_parameter max-bandwidth x",
    "migrate_set_parameter compress-level 12",
    "migrate_set_parameter multifd-compression pigs",
    "migrate_set_parameter downtime-limit abc",
    "migrate_start_postcopy",
    "migrate_pause",
    "migrate_recover unix:/tmp/nowhere",
    "migrate",
    "calc_dirty_rate",
]
SETTINGS = ["migrate_set_parameter max-bandwidth 20M",
            "migrate_set_parameter cpu-throttle-initial 30",
            "migrate_set_parameter cpu-throttle-tailslow on",
            "migrate_set_parameter multifd-compression zstd",
            "migrate_set_capability events on",
            "migrate_set_capability xbzrle on"]


def hmp(vm: Vm, line: str) -> str:
    return str(vm.cmd("human-monitor-command", **{"command-line": line}))


def labels(text: str, skip: set[str] | None = None) -> list[str]:
    found = [line.split(":", 1)[0] for line in text.split("\r\n") if line]
    return [label for label in found if label not in (skip or set())]


def session(lab: VmLauncher, kind: VmmKind, tag: str) -> dict[str, str]:
    """The same HMP lines on a fresh VM of ``kind``, and one migration."""
    src = lab.start(kind, f"{tag}-src")
    out = {line: hmp(src, line) for line in ("info migrate", "info migrate_capabilities",
                                            "info migrate_parameters", "info dirty_rate")}
    out.update({line: hmp(src, line) for line in ERRORS})
    out["calc_dirty_rate 1"] = hmp(src, "calc_dirty_rate 1")
    wait_until(lambda: "measured" in hmp(src, "info dirty_rate"), 30, "the measurement")
    out["info dirty_rate, measured"] = hmp(src, "info dirty_rate")
    for line in SETTINGS:
        out[line] = hmp(src, line)
    out["info migrate_parameters, set"] = hmp(src, "info migrate_parameters")
    sock = lab.workdir / f"{tag}.sock"
    dst = lab.start(kind, f"{tag}-dst", extra=["-incoming", "defer"])
    out["migrate_incoming"] = hmp(dst, f"migrate_incoming unix:{sock}")
    wait_until(sock.exists, 30, "the destination's socket")
    out["migrate"] = hmp(src, f"migrate -d unix:{sock}")
    wait_until(lambda: "dirty sync count" in hmp(src, "info migrate"), 60, "a first pass")
    out["info migrate, active"] = hmp(src, "info migrate")
    hmp(src, "migrate_set_parameter max-bandwidth 10G")
    hmp(src, "migrate_set_parameter downtime-limit 30000")
    wait_for_status(src, "completed")
    out["info migrate, completed"] = hmp(src, "info migrate")
    return out


@pytest.mark.skipif(LIVEMIG is None or QEMU is None, reason="needs livemig and QEMU")
def test_hmp_migration_views_and_commands_match_qemu(lab: VmLauncher) -> None:
    ours = session(lab, VmmKind("livemig-tcg", LIVEMIG or "", "tcg"), "lm")
    theirs = session(lab, VmmKind("qemu-tcg", QEMU or "", "tcg"), "qemu")
    # Word for word: nothing here depends on the VMM.
    for line in ("info migrate", "info dirty_rate", "calc_dirty_rate 1", "migrate",
                 "migrate_incoming", *ERRORS, *SETTINGS):
        assert ours[line] == theirs[line], line
    # livemig knows capabilities and parameters of later QEMUs too (8.1's
    # dirty-limit, 9.0's mapped-ram, 8.2's mode) and its own: QEMU 7.2's come
    # first, in its order, and (defaults, or set by the lines above) read the same.
    for view in ("info migrate_capabilities", "info migrate_parameters",
                 "info migrate_parameters, set"):
        qemu_lines = theirs[view].split("\r\n")
        assert ours[view].split("\r\n")[:len(qemu_lines) - 1] == qemu_lines[:-1], view
    assert labels(ours["info dirty_rate, measured"]) == \
        labels(theirs["info dirty_rate, measured"])
    for view in ("info migrate, active", "info migrate, completed"):
        assert labels(ours[view], OPTIONAL) == labels(theirs[view], OPTIONAL), view
    assert "xbzrle cache miss rate" in labels(ours["info migrate, active"])
    assert "Migration status: completed" in ours["info migrate, completed"]


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_hmp_lines_reach_the_migration(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """What the HMP words set is what QMP then reads; a failed migrate is
    shown with its cause, as QEMU 7.2 shows it."""
    vm = lab.start(livemig_tcg, "vm")
    assert hmp(vm, "migrate_set_parameter max-bandwidth 20M") == ""
    assert hmp(vm, "migrate_set_parameter mode cpr-reboot") == ""
    assert hmp(vm, "migrate_set_capability auto-converge on") == ""
    params = vm.cmd("query-migrate-parameters")
    assert params["max-bandwidth"] == 20 << 20 and params["mode"] == "cpr-reboot"
    caps = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
    assert caps["auto-converge"]
    assert hmp(vm, "migrate_set_parameter mode normal") == ""
    assert hmp(vm, "migrate -d unix:/nonexistent/sock") == ""
    wait_until(lambda: vm.cmd("query-migrate").get("status") == "failed", 30, "the failure")
    assert ("Migration status: failed (Failed to connect to '/nonexistent/sock': "
            "No such file or directory)") in hmp(vm, "info migrate")
    assert hmp(vm, "calc_dirty_rate -r -b 1") == \
        "Error: Either dirty ring or dirty bitmap can be specified!\r\n"
    assert hmp(vm, "info bogus").startswith("info: unknown")
    assert vm.status() == "running"
