"""Convergence policies (issue 10), livemig only (QEMU has none): the
shipped auto-postcopy and deadline policies, a user's policy loaded by
module:Class, and a policy that raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from migration_helpers import check_guests_ram, migrate, wait_for_status
from postcopy_helpers import set_capability
from test_auto_converge import GUEST, LINK
from test_workload_guest import start_dirty

from livemig.lab import LabError, Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_dirty_ram

TESTS = Path(__file__).resolve().parent


def _ab_pair(lab: VmLauncher, kind: VmmKind, params: dict[str, Any],
             env: dict[str, str] | None = None) -> tuple[Vm, Vm, str]:
    """The built-in guest at a 1 ms downtime-limit: precopy alone never ends."""
    socket_path = lab.workdir / "mig.sock"
    src = lab.start(kind, "src", env={"PYTHONPATH": str(TESTS), **(env or {})})
    dst = lab.start(kind, "dst", extra=["-incoming", f"unix:{socket_path}"])
    wait_until(socket_path.exists, 30, "the destination socket")
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 1_000_000_000, "downtime-limit": 1,
                                         **params})
    src.wait_serial(b"B", timeout=60)
    return src, dst, f"unix:{socket_path}"


def test_a_user_policy_is_called_every_pass_and_obeyed(livemig_tcg: VmmKind,
                                                       lab: VmLauncher) -> None:
    calls = lab.workdir / "policy.log"
    src, dst, uri = _ab_pair(lab, livemig_tcg,
                             {"livemig-convergence-policy":
                              "policies_for_tests:SwitchAtThirdPass"},
                             env={"POLICY_LOG": str(calls)})
    migrate(src, uri)
    info = wait_for_status(src, "completed", timeout=60)
    assert len(calls.read_text().splitlines()) == 3
    assert [p["decision"] for p in info["livemig-passes"]] == ["continue", "continue",
                                                               "switchover"]
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check_guests_ram(dst)


@pytest.mark.parametrize("policy, error", [
    ("Explodes", "convergence policy failed: RuntimeError: policy exploded"),
    ("ReturnsNone", "convergence policy failed: TypeError: decide() returned None, "
                    "not a Decision"),
])
def test_a_policy_that_raises_fails_the_migration(livemig_tcg: VmmKind, lab: VmLauncher,
                                                  policy: str, error: str) -> None:
    src, _dst, uri = _ab_pair(lab, livemig_tcg,
                              {"livemig-convergence-policy": f"policies_for_tests:{policy}"})
    migrate(src, uri)
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                      60, "the migration to fail")
    assert info["error-desc"] == error, info
    assert src.status() == "running"


@pytest.mark.parametrize("name, message", [
    ("nope", "unknown convergence policy 'nope'"),
    ("nosuch_module:X", "cannot load convergence policy 'nosuch_module:X'"),
    ("os:path", "is not a class with a decide"),
])
def test_bad_policy_names_are_refused(livemig_tcg: VmmKind, lab: VmLauncher, name: str,
                                      message: str) -> None:
    vm = lab.start(livemig_tcg, "g")
    with pytest.raises(LabError, match=f"Parameter 'livemig-convergence-policy': .*{message}"):
        vm.cmd("migrate-set-parameters", **{"livemig-convergence-policy": name})
    assert vm.cmd("query-migrate-parameters")["livemig-convergence-policy"] == "qemu"


def test_deadline_policy_finishes_in_time(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    src, dst, uri = _ab_pair(lab, livemig_tcg, {"livemig-convergence-policy": "deadline",
                                                "livemig-deadline": 3000})
    migrate(src, uri)
    info = wait_for_status(src, "completed", timeout=60)
    assert info["total-time"] < 3000 + 1000, info  # the deadline, plus the downtime
    assert info["livemig-passes"][-1]["decision"] == "switchover"
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check_guests_ram(dst)


def test_auto_postcopy_rescues_what_precopy_cannot(livemig_tcg: VmmKind,
                                                   lab: VmLauncher) -> None:
    """The auto-converge tests' guest (40 MiB/s against a 20 MB/s link):
    without throttling it never converges; auto-postcopy switches to postcopy
    by itself and the migration completes."""
    kind = livemig_tcg
    socket_path = lab.workdir / "mig.sock"
    src = start_dirty(lab, kind, "src", GUEST)
    dst = start_dirty(lab, kind, "dst", GUEST, extra=["-incoming", f"unix:{socket_path}"])
    wait_until(socket_path.exists, 30, "the destination socket")
    for vm in (src, dst):
        set_capability(vm, "postcopy-ram")
    src.cmd("migrate-set-parameters", **{"max-bandwidth": LINK,
                                         "livemig-convergence-policy": "auto-postcopy"})
    src.wait_serial(b"B", timeout=60)  # the whole set written once
    migrate(src, f"unix:{socket_path}")
    info = wait_for_status(src, "completed", timeout=120)
    assert info["livemig-passes"][-1]["decision"] == "postcopy", info["livemig-passes"]
    assert info["ram"]["postcopy-bytes"] > 0
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check = check_dirty_ram(dst)
    assert check.ok, check.describe()
