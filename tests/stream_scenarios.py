"""Building blocks for the multifd, compression, xbzrle and TLS scenarios:
a source and a ``-incoming defer`` destination set up alike, over unix or
tcp, on any QEMU-compatible VMM."""

from __future__ import annotations

from typing import Any

from conftest import slowdown
from migration_helpers import migrate, migrate_end, wait_for_status
from postcopy_helpers import set_capability

from livemig.lab import Vm, VmLauncher, VmmKind, wait_until


def incoming_uri(lab: VmLauncher, dst: Vm, transport: str, host: str = "127.0.0.1") -> str:
    """Start ``dst`` listening (it was started with -incoming defer); the URI to migrate to."""
    if transport == "unix":
        uri = f"unix:{lab.workdir / 'mig.sock'}"
        dst.cmd("migrate-incoming", uri=uri)
        wait_until((lab.workdir / "mig.sock").exists, 30, "the incoming socket")
        return uri
    dst.cmd("migrate-incoming", uri=f"tcp:{host}:0")
    address = wait_until(lambda: dst.cmd("query-migrate").get("socket-address"), 30,
                         "the incoming port")
    return f"tcp:{host}:{address[0]['port']}"


def configured_pair(lab: VmLauncher, kind: VmmKind, caps: list[str], params: dict[str, Any],
                    src_extra: list[str] | None = None, dst_extra: list[str] | None = None,
                    dst_params: dict[str, Any] | None = None) -> tuple[Vm, Vm]:
    """A source and a deferred destination with the same capabilities and parameters
    (``dst_params``: the destination's own, where they differ)."""
    src = lab.start(kind, "src", extra=src_extra)
    dst = lab.start(kind, "dst", extra=["-incoming", "defer", *(dst_extra or [])])
    for vm, own in ((src, params), (dst, dst_params if dst_params is not None else params)):
        for cap in caps:
            set_capability(vm, cap)
        if own:
            vm.cmd("migrate-set-parameters", **own)
    return src, dst


def migrate_and_check(src: Vm, dst: Vm, uri: str, kind: VmmKind,
                      max_bandwidth: int = 1_000_000_000) -> dict[str, Any]:
    """Migrate the running built-in guest; the reference RAM check on the destination."""
    slow = slowdown(kind)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": max_bandwidth})
    src.wait_serial(b"B", timeout=60 * slow)
    migrate(src, uri)
    info = wait_for_status(src, "completed", timeout=120 * slow)
    wait_for_status(dst, "completed", timeout=60 * slow)
    assert dst.status() == "running"
    migrate_end(src, dst, True, kind)
    return info
