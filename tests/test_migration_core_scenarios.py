"""Issue 8's defects, each as a scenario that failed before the migration
core was rebuilt: races around completion, job threads that died silently,
hostile QMP clients, parameter and URI checks, and QEMU's small habits.
Run on livemig and QEMU wherever QEMU shares the behaviour."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
from conftest import LIVEMIG
from migration_helpers import (
    completed_with_ram_intact,
    migrate,
    migration_status,
    start_dest,
    wait_for_migration_pass,
    wait_for_status,
)
from postcopy_helpers import enable_postcopy, postcopy_start, set_capability, set_parameter
from stream_helpers import drain

from livemig.lab import LabError, Vm, VmLauncher, VmmKind, wait_until

FAST = 100_000_000_000


def _drain_listener(path: Path) -> threading.Thread:
    """A destination that reads everything and says nothing (a fake peer)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            server.settimeout(60)
            conn, _ = server.accept()
        with conn:
            drain(conn).join()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _migrate_to_drain(src: Vm, path: Path) -> threading.Thread:
    peer = _drain_listener(path)
    migrate(src, f"unix:{path}")
    return peer


def test_cancel_around_completion_always_ends_cleanly(vmm_any_accel: VmmKind,
                                                      lab: VmLauncher) -> None:
    """migrate_cancel at random moments around completion, 30 times (up to 60
    while one ending has not been seen): the job ends cancelled or completed,
    never stuck, and the next migrate starts."""
    kind = vmm_any_accel
    src = lab.start(kind, "src")
    set_parameter(src, "max-bandwidth", FAST)
    # How long one migration takes here: the cancels are aimed across that span.
    peer = _migrate_to_drain(src, lab.workdir / "drain-timed.sock")
    info = wait_for_status(src, "completed", timeout=60)
    peer.join(30)
    src.cmd("cont")
    span = 2 * info["total-time"] / 1000
    rng = random.Random(8)
    outcomes: set[str] = set()
    for index in range(60):
        if index >= 30:
            if outcomes == {"cancelled", "completed"}:
                break
            # A loaded machine (CI: QEMU's 30 all cancelled): its migrations
            # now take longer or shorter than the one timed; aim where the
            # missing ending lies.
            span *= 1.5 if "completed" not in outcomes else 0.6
        try:
            outcomes.add(_cancel_once(src, lab.workdir / f"drain{index}.sock",
                                      rng.uniform(0, span)))
        except LabError:
            _qemu_block_inactivation_crash(src)
            raise
    # Aimed across the whole migration, cancels land both before and after
    # the point of no return: both endings must have been seen.
    assert outcomes == {"cancelled", "completed"}, outcomes


def _cancel_once(src: Vm, path: Path, delay: float) -> str:
    """Migrate to a draining peer, cancel after ``delay``; how the job ended."""
    peer = _migrate_to_drain(src, path)
    time.sleep(delay)   # where to aim this cancel, not a wait
    src.cmd("migrate_cancel")
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] in
                      ("cancelled", "completed") and i, 30, "the job to end")
    peer.join(30)
    if info["status"] == "completed":
        src.cmd("cont")
    assert src.status() == "running"
    return str(info["status"])


def _qemu_block_inactivation_crash(vm: Vm) -> None:
    """A deliberate difference, stated: QEMU 7.2 aborts when a cancel lands
    just as it completes, on the assertion in block.c that a disk is not
    inactivated twice (its disk inactivation around completion was rewritten
    in later QEMUs). The test records that as an expected failure of QEMU's,
    and only that: livemig, and any other QEMU failure, still fail."""
    if vm.kind.is_qemu and vm.process.poll() is not None and \
            "bdrv_inactivate_recurse: Assertion" in vm.stderr_text():
        pytest.xfail("QEMU 7.2 aborts in bdrv_inactivate_recurse on a cancel at completion")


def _pair_with_fault(lab: VmLauncher, kind: VmmKind, point: str, side: str) -> tuple[Vm, Vm]:
    """A source and a destination on mig.sock, ``point`` armed on ``side``."""
    env = {"LIVEMIG_INJECT_FAULT": point}
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src", env=env if side == "src" else None)
    dst = (start_dest(lab, kind, "dst", uri) if side == "src"
           else lab.start(kind, "dst", extra=["-incoming", uri], env=env))
    wait_until(lambda: (lab.workdir / "mig.sock").exists(), 30, "the incoming socket")
    return src, dst


@pytest.mark.parametrize("point", ["source-pass", "receive-precopy"])
def test_injected_internal_error_before_switchover(livemig_tcg: VmmKind, lab: VmLauncher,
                                                   point: str) -> None:
    """A bug in a job thread fails the job loudly; the source guest runs on
    and a next migration works."""
    kind = livemig_tcg
    src, dst = _pair_with_fault(lab, kind, point, "src" if point == "source-pass" else "dst")
    migrate(src, f"unix:{lab.workdir / 'mig.sock'}")
    if point == "source-pass":
        info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                          60, "the source to fail")
        assert "internal error: InjectedFault" in info["error-desc"], info
    else:
        assert dst.wait_exit(60) == 1
        assert "internal error: InjectedFault" in dst.stderr_text()
        wait_until(lambda: migration_status(src) == "failed", 60, "the source to fail")
    assert src.status() == "running"
    uri2 = f"unix:{lab.workdir / 'mig2.sock'}"
    dst2 = start_dest(lab, kind, "dst2", uri2)
    set_parameter(src, "max-bandwidth", FAST)
    migrate(src, uri2)
    wait_for_status(src, "completed", timeout=120)
    wait_until(lambda: dst2.status() == "running", 30, "the second destination to run")


@pytest.mark.parametrize("point,side", [("receive-postcopy", "dst"), ("fault-service", "dst"),
                                        ("return-path", "src")])
def test_injected_internal_error_after_switchover(livemig_tcg: VmmKind, lab: VmLauncher,
                                                  point: str, side: str) -> None:
    """After switchover a bug pauses the job (never fails it) and recovery
    brings it to completion, RAM intact."""
    kind = livemig_tcg
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src, dst = _pair_with_fault(lab, kind, point, side)
    for vm in (src, dst):
        set_capability(vm, "postcopy-ram")
    # The reference scenario's 100 MB/s: the first pass takes 1.5 s, not 7.5.
    set_parameter(src, "max-bandwidth", 100_000_000)
    set_parameter(src, "downtime-limit", 1)
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0) >= 2,
               120, "the first pass")
    src.cmd("migrate-start-postcopy")
    paused = src if side == "src" else dst
    info = wait_for_status(paused, "postcopy-paused", timeout=60)
    assert "internal error: InjectedFault" in info["error-desc"], info
    other = dst if side == "src" else src
    if migration_status(other) != "postcopy-paused":
        try:
            other.cmd("migrate-pause")
        except LabError:  # it saw the break on its own meanwhile: pausing is refused then
            assert migration_status(other) == "postcopy-paused"
        wait_for_status(other, "postcopy-paused", timeout=30)
    rec = f"unix:{lab.workdir / 'rec.sock'}"
    dst.cmd("migrate-recover", uri=rec)
    wait_until(lambda: (lab.workdir / "rec.sock").exists(), 30, "the recovery socket")
    set_parameter(src, "max-postcopy-bandwidth", 0)
    migrate(src, rec, resume=True)
    completed_with_ram_intact(src, dst)


def test_max_bandwidth_zero_during_a_limited_migration(vmm_any_accel: VmmKind,
                                                       lab: VmLauncher) -> None:
    kind = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src")
    start_dest(lab, kind, "dst", uri)
    set_parameter(src, "max-bandwidth", 5_000_000)
    migrate(src, uri)
    wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("transferred", 0) > 1 << 20,
               30, "some transfer")
    set_parameter(src, "max-bandwidth", 0)
    set_parameter(src, "downtime-limit", 2000)
    wait_for_status(src, "completed", timeout=120)


def test_postcopy_with_nothing_dirty(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """A paused guest (-S) switched to postcopy after its first pass: the
    list of stale pages is empty."""
    kind = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src", extra=["-S"])
    dst = start_dest(lab, kind, "dst", uri)
    for vm in (src, dst):
        set_capability(vm, "postcopy-ram")
    set_capability(src, "events")
    # A paused guest's RAM is nearly all zero pages, which cost a few bytes
    # each: at a higher limit QEMU can finish its whole precopy pass before
    # the switch is asked for, and this test would test nothing.
    set_parameter(src, "max-bandwidth", 100_000)
    migrate(src, uri)
    src.cmd("migrate-start-postcopy")
    src.wait_event("MIGRATION", 60, lambda ev: ev["data"]["status"] == "postcopy-active")
    wait_for_status(src, "completed", timeout=120)
    wait_for_status(dst, "completed", timeout=120)
    assert dst.pmem(0x7C00, 512) == src.pmem(0x7C00, 512)
    # A deliberate difference: livemig keeps a guest that was paused at the
    # source paused after postcopy, as both do after precopy; QEMU 7.2's
    # postcopy destination runs it regardless (it only looks at its own -S).
    assert dst.status() == ("running" if kind.is_qemu else "paused")


@contextmanager
def _raw_qmp(lab: VmLauncher, kind: VmmKind) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """A negotiated QMP session on a plain socket, for bytes no client library sends."""
    path = lab.workdir / "raw.sock"
    vm = lab.start(kind, "vm", connect=False,
                   extra=["-qmp", f"unix:{path},server=on,wait=off"])
    wait_until(path.exists, 30, "the QMP socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.settimeout(30)  # a missing answer fails the test, never hangs it
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b'{"execute":"qmp_capabilities"}')
        assert b"return" in reader.readline()
        yield sock, reader
    vm.kill()


def test_qmp_nesting_gets_an_answer_and_keeps_the_session(vmm_any_accel: VmmKind,
                                                          lab: VmLauncher) -> None:
    with _raw_qmp(lab, vmm_any_accel) as (sock, reader):
        def ask(text: bytes) -> dict:  # type: ignore[type-arg]
            sock.sendall(text)
            return json.loads(reader.readline())

        deep = b'{"execute":"query-status","arguments":{"a":' + b"[" * 1000 + b"]" * 1000
        assert ask(deep + b"}}")["error"]["desc"] == "Parameter 'a' is unexpected"
        deeper = b'{"execute":"query-status","arguments":{"a":' + b"[" * 1100 + b"]" * 1100
        assert ask(deeper + b"}}")["error"]["desc"] == "JSON nesting depth limit exceeded"
        sock.sendall(b'{"execute":"query-status"}')
        # The session lives. (QEMU then reports every stray closing bracket of
        # the refused value as an error of its own, ~1100 of them; livemig
        # skips the value whole: read on until the answer.)
        for _ in range(4000):
            answer = json.loads(reader.readline())
            if "return" in answer:
                break
        assert "return" in answer, answer


def test_hello_world_on_qmp(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    with _raw_qmp(lab, vmm_any_accel) as (sock, reader):
        sock.sendall(b"hello world\n")
        first = json.loads(reader.readline())
        assert first["error"]["desc"] == "JSON parse error, invalid keyword 'hello'"


def test_a_client_that_never_reads_blocks_nobody(vmm_any_accel: VmmKind,
                                                 lab: VmLauncher) -> None:
    """One client floods commands and reads nothing; another stops, resumes
    and migrates with events on, all answered in time."""
    kind = vmm_any_accel
    hostile_path = lab.workdir / "hostile.sock"
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src", extra=["-qmp", f"unix:{hostile_path},server=on,wait=off"])
    dst = start_dest(lab, kind, "dst", uri)
    hostile = socket.socket(socket.AF_UNIX)
    hostile.connect(str(hostile_path))
    hostile.sendall(b'{"execute":"qmp_capabilities"}')
    flood = b'{"execute":"query-status"}' * 20000
    sender = threading.Thread(target=lambda: _send_quietly(hostile, flood), daemon=True)
    sender.start()
    try:
        for vm in (src, dst):
            set_capability(vm, "events")
        started = time.monotonic()
        src.cmd("stop")
        src.cmd("cont")
        set_parameter(src, "max-bandwidth", FAST)
        migrate(src, uri)
        wait_for_status(src, "completed", timeout=60)
        assert time.monotonic() - started < 60
        assert any(e["event"] == "MIGRATION" for e in src.events)
        if not kind.is_qemu:  # livemig lets it fall behind, then drops it
            wait_until(lambda: "messages behind: disconnecting it" in src.stderr_text(), 60,
                       "the flooding client to be disconnected")
    finally:
        hostile.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # livemig disconnects a client that falls too far behind


def test_precopy_over_tcp_survives_a_stalled_destination(vmm_any_accel: VmmKind,
                                                         lab: VmLauncher) -> None:
    """SIGSTOP the destination for 6 s mid-migration: precopy waits, then completes."""
    kind = vmm_any_accel
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", "tcp:127.0.0.1:0"])
    port = int(dst.cmd("query-migrate")["socket-address"][0]["port"])
    set_parameter(src, "max-bandwidth", 20_000_000)
    src.wait_serial(b"B", timeout=60)  # RAM written: ~100 MiB that cannot go as zero pages
    migrate(src, f"tcp:127.0.0.1:{port}")
    wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("transferred", 0) > 4 << 20,
               30, "transfer under way")
    os.kill(dst.process.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert migration_status(src) == "active"   # keeps waiting, does not fail
            time.sleep(0.5)
    finally:
        os.kill(dst.process.pid, signal.SIGCONT)
    set_parameter(src, "max-bandwidth", FAST)
    set_parameter(src, "downtime-limit", 2000)
    wait_for_status(src, "completed", timeout=120)


def test_rates_move_during_the_first_pass(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src")
    start_dest(lab, kind, "dst", uri)
    set_parameter(src, "max-bandwidth", 20_000_000)
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    info = wait_until(lambda: (i := src.cmd("query-migrate")).get("ram", {}).get("mbps", 0) > 0
                      and i.get("expected-downtime", 0) > 0 and i, 2.5, "live rates")
    assert info["ram"]["dirty-sync-count"] == 1, info   # still the first pass
    if kind.is_qemu:
        # QEMU 7.2 computes dirty-pages-rate only at a dirty-log sync: still
        # 0 three seconds into the first pass here. livemig samples its log.
        assert src.cmd("query-migrate")["ram"]["dirty-pages-rate"] == 0
    else:
        wait_until(lambda: src.cmd("query-migrate")["ram"]["dirty-pages-rate"] > 0, 3,
                   "a dirty rate")
    src.cmd("migrate_cancel")


def test_migration_event_comes_before_stop_at_postcopy(vmm_any_accel: VmmKind,
                                                       lab: VmLauncher) -> None:
    kind = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src")
    dst = start_dest(lab, kind, "dst", uri)
    for vm in (src, dst):
        set_capability(vm, "postcopy-ram")
        set_capability(vm, "events")
    set_parameter(src, "max-bandwidth", 50_000_000)
    set_parameter(src, "downtime-limit", 1)   # precopy alone must not converge
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0) >= 2,
               120, "the first pass")
    src.cmd("migrate-start-postcopy")
    wait_for_status(src, "completed", timeout=120)
    names = [(e["event"], e.get("data", {}).get("status")) for e in src.events]
    assert names.index(("MIGRATION", "postcopy-active")) < names.index(("STOP", None)), names


@pytest.mark.parametrize("uri,desc", [
    ("exec:false", "Unable to write to command: Broken pipe"),
    ("tcp:127.0.0.1:1", "Failed to connect to '127.0.0.1:1': Connection refused"),
    ("unix:/nonexistent/x", "Failed to connect to '/nonexistent/x': No such file or directory"),
])
def test_connection_errors_in_qemus_words(vmm_any_accel: VmmKind, lab: VmLauncher, uri: str,
                                          desc: str) -> None:
    src = lab.start(vmm_any_accel, "src")
    migrate(src, uri)
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                      30, "the failure")
    assert info["error-desc"] == desc
    assert src.status() == "running"


@pytest.mark.parametrize("uri,desc", [
    ("bogus:x", "Parameter 'uri' expects a valid migration protocol"),
    ("tcp::", "error parsing port in address ':'"),
    ("tcp:localhost", "error parsing address 'localhost'"),
    ("fd:nosuch", "File descriptor named 'nosuch' has not been found"),
    ("unix:", "invalid Unix socket address"),
    ("file:", "Parameter 'uri' expects a valid migration protocol"),
    ("file:/x,offset=many", "Parameter 'uri' expects a valid migration protocol"),
])
def test_bad_uris_refused_at_once(vmm_any_accel: VmmKind, lab: VmLauncher, uri: str,
                                  desc: str) -> None:
    if uri.startswith("file:") and not vmm_any_accel.is_qemu:
        # QEMU 7.2 has no file: URI at all; livemig has QEMU 9's, and says
        # what is wrong with this one.
        desc = ("file URI has bad offset many" if "offset" in uri
                else "file URI needs a path: file:PATH[,offset=N]")
    src = lab.start(vmm_any_accel, "src")
    answer = src.raw("migrate", {"uri": uri})
    assert answer.get("error", {}).get("desc") == desc, answer
    assert migration_status(src) == "failed"
    assert src.status() == "running"


def _imported(vm: Vm) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in vm.stderr_text().splitlines()
            if line.startswith("import time:")}


HEAVY = {"numpy", "livemig.migration.outgoing", "livemig.migration.incoming"}
# Loaded on a thread of its own once the machine starts (accel/tcg.py).
ENGINE = {"unicorn", "livemig.accel.tcg_unicorn"}
# Standard modules whose import costs start-up milliseconds it need not pay:
# livemig.logs loads logging at the first message, and no class on the
# start-up path is a dataclass (dataclasses and the inspect it loads: ~14 ms,
# and ~1 ms to create each class).
SLOW_STDLIB = {"logging", "dataclasses", "inspect"}

_BUILD_ONLY = """
import sys
from livemig.cli.options import parse
from livemig.cli.system import System
system = System(parse(sys.argv[1:]))
print(" ".join(sorted(sys.modules)))
system.close()
"""


@pytest.mark.parametrize("accel,incoming", [("tcg", False), ("kvm", False), ("tcg", True)],
                         ids=["tcg", "kvm", "tcg-incoming-unix"])
def test_building_a_machine_loads_no_engine_no_migration_job_and_nothing_slow(
        lab: VmLauncher, accel: str, incoming: bool) -> None:
    """Everything start-up does before the monitors serve (options, chardevs,
    machine, QMP, migration manager; with ``-incoming unix:`` the bound
    listener too) leaves Unicorn, numpy and the job modules unloaded (they
    are what made start-up 8x QEMU's), and logging and dataclasses too."""
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not available")
    qmp = lab.workdir / "build-only.qmp"
    argv = [sys.executable, "-c", _BUILD_ONLY, "-machine", f"accel={accel}", "-m", "150M",
            "-display", "none", "-nodefaults", "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        argv += ["-incoming", f"unix:{lab.workdir / 'in.sock'}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    loaded = set(done.stdout.split())
    assert "livemig.machine.machine" in loaded, done.stdout  # the check itself works
    unwanted = HEAVY | ENGINE | SLOW_STDLIB
    if incoming:
        assert "livemig.migration.listener" in loaded, done.stdout
        unwanted |= {"livemig.migration.codec", "livemig.migration.channel", "ssl"}
    assert not unwanted & loaded, sorted(unwanted & loaded)


def test_start_up_imports_nothing_heavy_and_warms_up_after_the_greeting(
        lab: VmLauncher) -> None:
    """numpy and the migration jobs are not loaded before the QMP greeting
    (start-up stays quick); once a client has its greeting they load in
    the background, so the first migrate does not pay for them. The tcg
    engine (Unicorn) is not on the start-up path either."""
    if LIVEMIG is None:
        pytest.skip("livemig not installed")
    kind = VmmKind("livemig-tcg", LIVEMIG, "tcg")
    for extra in ([], ["-incoming", "defer"]):
        vm = lab.start(kind, f"vm{len(extra)}", extra=extra, connect=False,
                       env={"PYTHONPROFILEIMPORTTIME": "1"})
        # The QMP socket listens once start-up is done; no client yet.
        wait_until(vm.qmp_path.exists, 30, "the QMP socket")
        imported = _imported(vm)
        assert imported, "no import-time lines: the check itself is broken"
        heavy = {name for name in imported if name.split(".")[0] in HEAVY or name in HEAVY}
        assert not heavy, sorted(heavy)
        vm.connect()
        wait_until(lambda vm=vm: HEAVY <= _imported(vm), 30, "the warm-up imports")
        assert vm.status() in ("running", "inmigrate")
        # numpy's OpenBLAS starts no worker threads (they would spin on the
        # vCPU's cores): a worker would take the warm-up thread's name and
        # outlive it.
        wait_until(lambda vm=vm: "mig/warm-up" not in _thread_names(vm), 30,
                   "the warm-up thread to end, leaving no thread of its name")
        vm.kill()


def test_a_postcopy_destination_imports_nothing_after_the_switch(lab: VmLauncher) -> None:
    """What a postcopy destination needs, query-migrate's answers included,
    is loaded before the switch: an import after it runs under the GIL while
    the guest waits for pages (np.percentile in query-migrate loaded
    numpy.ma there: 12 ms of one run's ~100 ms of postcopy)."""
    if LIVEMIG is None:
        pytest.skip("livemig not installed")
    kind = VmmKind("livemig-tcg", LIVEMIG, "tcg")
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", uri],
                    env={"PYTHONPROFILEIMPORTTIME": "1"})
    wait_until(Path(uri[len("unix:"):]).exists, 30, "the incoming socket")
    enable_postcopy(src, dst)
    set_parameter(src, "max-bandwidth", 100_000_000)
    set_parameter(src, "downtime-limit", 1)
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    wait_for_migration_pass(src)
    wait_until(lambda: "mig/warm-up" not in _thread_names(dst), 30, "the warm-up to end")
    assert dst.cmd("query-migrate")["status"] == "active"   # a poller's question, before
    before = _imported(dst)
    assert "livemig.migration.postcopy_dest" in before, "the check itself is broken"
    postcopy_start(src, dst, kind)
    wait_until(lambda: dst.cmd("query-migrate")["status"] == "completed", 60,
               "the destination to complete, polled as orchestrators do")
    assert dst.cmd("query-migrate")["livemig-fault-latency"]["count"] > 0
    late = _imported(dst) - before
    assert not late, f"imported after the switch: {sorted(late)}"


def _thread_names(vm: Vm) -> list[str]:
    task = Path(f"/proc/{vm.process.pid}/task")
    names = []
    for entry in task.iterdir():
        try:
            names.append((entry / "comm").read_text().strip())
        except OSError:
            continue  # a thread that just ended
    return names


def test_uuid_validation(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """validate-uuid as QEMU 7.2: only a differing UUID set on both sides refuses."""
    kind = vmm_any_accel
    one, two = "11111111-2222-3333-4444-555555555555", "11111111-2222-3333-4444-666666666666"
    cases = [(one, one, True), (one, two, False), (None, one, True), (one, None, True)]
    for index, (src_uuid, dst_uuid, ok) in enumerate(cases):
        uri = f"unix:{lab.workdir / f'mig{index}.sock'}"
        src = lab.start(kind, f"src{index}", extra=["-uuid", src_uuid] if src_uuid else [])
        dst = start_dest(lab, kind, f"dst{index}", uri,
                         ["-uuid", dst_uuid] if dst_uuid else [])
        if src_uuid:
            assert src.cmd("query-uuid")["UUID"] == src_uuid
        set_capability(src, "validate-uuid")
        set_parameter(src, "max-bandwidth", FAST)
        migrate(src, uri)
        if ok:
            wait_for_status(src, "completed", timeout=120)
            wait_until(lambda d=dst: d.status() == "running", 30, "the destination to run")
        else:
            assert dst.wait_exit(60) != 0
            assert "UUID received is" in dst.stderr_text()
            wait_until(lambda s=src: migration_status(s) == "failed", 60, "the source to fail")
            assert src.status() == "running"
        src.kill()
        dst.kill()
    plain = lab.start(kind, "plain")
    assert plain.cmd("query-uuid")["UUID"] == "00000000-0000-0000-0000-000000000000"


def test_incoming_fd_by_name(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """getfd on the destination, then migrate-incoming fd:NAME."""
    kind = vmm_any_accel
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", "defer"])
    left, right = socket.socketpair()
    with left, right:
        src.qmp.send_fd_scm(left.fileno())
        src.cmd("getfd", fdname="out")
        dst.qmp.send_fd_scm(right.fileno())
        dst.cmd("getfd", fdname="in")
    dst.cmd("migrate-incoming", uri="fd:in")
    set_parameter(src, "max-bandwidth", FAST)
    migrate(src, "fd:out")
    wait_for_status(src, "completed", timeout=120)
    wait_until(lambda: dst.status() == "running", 60, "the destination to run")


@pytest.mark.parametrize("events", [True, False], ids=["events", "no-events"])
def test_incoming_says_setup_before_its_reply(vmm_any_accel: VmmKind, lab: VmLauncher,
                                              events: bool) -> None:
    """migrate-incoming's 'setup' event comes before its reply, with no
    source yet and whether or not the events capability is on: libvirt's
    restore reads the destination's status from the events alone, at once
    ("job 'start' is not active" otherwise). Each status is announced once,
    and with the capability off nothing after 'setup' is."""
    kind = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", "defer"])
    dst.cmd("migrate-set-capabilities",
            capabilities=[{"capability": "events", "state": events}])
    dst.cmd("migrate-incoming", uri=uri)
    assert [e["data"]["status"] for e in dst.events if e["event"] == "MIGRATION"] == ["setup"]
    set_parameter(src, "max-bandwidth", FAST)
    migrate(src, uri)
    if events:
        dst.wait_event("MIGRATION", match=lambda e: e["data"]["status"] == "completed",
                       timeout=120)  # consumed: what is left came before it
    else:
        wait_for_status(dst, "completed")
        dst.cmd("query-status")  # collects any event sent before this answer
    statuses = [e["data"]["status"] for e in dst.events if e["event"] == "MIGRATION"]
    assert statuses == (["setup", "active"] if events else ["setup"]), statuses


def test_cpu_host_needs_kvm(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    proc = lab.spawn(lab.argv(kind, "cpu", extra=["-cpu", "host", "-machine", "accel=tcg"],
                              qmp=False), "cpu")
    assert proc.wait(30) == 1
    assert "CPU model 'host' requires KVM or HVF" in (lab.workdir / "cpu.stderr").read_text()



def _rss_mib(vm: Vm) -> float:
    for line in Path(f"/proc/{vm.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_zero_pages_cost_the_destination_nothing(vmm_any_accel: VmmKind,
                                                 lab: VmLauncher) -> None:
    """A 1 GiB source with no guest (all zero) into a destination that
    booted the built-in guest: the destination's boot sector and the pages
    its guest wrote read as zero afterwards, and loading 1 GiB of zero runs
    does not make its RSS grow by anything like 1 GiB (QEMU, too, leaves
    zero pages untouched)."""
    kind = vmm_any_accel
    socket_path = lab.workdir / "mig.sock"
    uri = f"unix:{socket_path}"
    src = lab.start(kind, "src", ram="1024M", boot=False)
    dst = lab.start(kind, "dst", ram="1024M", extra=["-incoming", uri])
    wait_until(socket_path.exists, 30, "the destination socket")
    before = _rss_mib(dst)
    migrate(src, uri)
    wait_for_status(src, "completed", timeout=120)
    wait_for_status(dst, "completed", timeout=120)
    assert dst.pmem(0x7C00, 512) == bytes(512)
    assert _rss_mib(dst) - before < 256, (before, _rss_mib(dst))
