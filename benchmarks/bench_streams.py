"""Migration streams, livemig against QEMU: multifd, compression, TLS.

    python benchmarks/bench_streams.py [--runs N] [--idle-ram 2G] [--only idle|tls|compression]

1. idle: a guest that never runs (-S) with all of ``--idle-ram`` non-zero
   (qtest ``memset``), over tcp loopback, with multifd 1, 2 and 4 channels.
   Throughput = guest RAM / total-time (both VMMs count the same RAM; QEMU's
   ``transferred`` counts multifd pages before any compression).
2. tls: the same, with TLS (x509 certificates made for the run), one stream
   and multifd 4 channels.
3. compression: the running built-in guest (one changing byte per page)
   through a 50 MB/s link (``max-bandwidth`` 50 MB/s on both, and a lab relay
   that holds the link to 50 MB/s, since QEMU 7.2's multifd ignores
   ``max-bandwidth``), with none / zlib / zstd (multifd, 2 channels) /
   xbzrle. Bytes are counted by the relay: what really crossed the link.
   ``none`` cannot converge at 300 ms on 50 MB/s (the guest dirties 100 MiB
   in well under a second), so every mode runs with downtime-limit
   ``--downtime`` ms (default 2500), the same for both VMMs.

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from common import alternate, arguments, console, fill_over_qtest, kinds, report

from livemig.lab import Vm, VmLauncher, VmmKind, qtest_listener, wait_until
from livemig.lab.certs import x509_dirs
from livemig.lab.checks import check_ab_ram
from livemig.lab.link import Link

LINK_PLUS = 100_000_000_000  # bytes/s: "higher than the link"
SLOW_LINK = 50_000_000       # bytes/s: the compression scenario's link


def _capabilities(vm: Vm, names: list[str]) -> None:
    if names:
        vm.cmd("migrate-set-capabilities",
               capabilities=[{"capability": n, "state": True} for n in names])


def _pair(lab: VmLauncher, kind: VmmKind, caps: list[str], params: dict[str, Any],
          tls: tuple[Path, Path] | None, ram: str = "150M", boot: bool = True,
          src_extra: list[str] | None = None) -> tuple[Vm, Vm, int]:
    """A source and a destination listening on tcp, configured alike; the port."""
    src_objects: list[str] = []
    dst_objects: list[str] = []
    if tls is not None:
        server, client = tls
        src_objects = ["-object", f"tls-creds-x509,id=tls0,endpoint=client,dir={client}"]
        dst_objects = ["-object", f"tls-creds-x509,id=tls0,endpoint=server,dir={server}"]
    src = lab.start(kind, "src", ram=ram, boot=boot, extra=[*(src_extra or []), *src_objects])
    dst = lab.start(kind, "dst", ram=ram, boot=boot,
                    extra=[*dst_objects, "-incoming", "defer"])
    for vm in (src, dst):
        _capabilities(vm, caps)
        own = dict(params)
        if tls is not None:
            own["tls-creds"] = "tls0"
        if own:
            vm.cmd("migrate-set-parameters", **own)
    if tls is not None:
        src.cmd("migrate-set-parameters", **{"tls-hostname": "localhost"})
    dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
    address = wait_until(lambda: dst.cmd("query-migrate").get("socket-address"), 30,
                         "the incoming port")
    return src, dst, int(address[0]["port"])


def _complete(src: Vm, dst: Vm, uri: str, timeout: float = 300) -> dict[str, Any]:
    src.cmd("migrate", uri=uri)
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] in
                      ("completed", "failed") and i, timeout, "the migration", interval=0.005)
    if info["status"] != "completed":
        raise SystemExit(f"{src.kind.label}: migration failed: {info.get('error-desc')}")
    wait_until(lambda: dst.cmd("query-migrate").get("status") == "completed", 120,
               "the destination")
    return info


def idle(kind: VmmKind, ram: str, channels: int, tls: tuple[Path, Path] | None
         ) -> dict[str, float]:
    """One idle-guest migration: GB/s of guest RAM moved."""
    lab = VmLauncher()
    try:
        size = int(ram.rstrip("G")) << 30
        qtest_path = lab.workdir / "idle.qtest"
        listener = qtest_listener(qtest_path)
        caps = ["multifd"] if channels else []
        params: dict[str, Any] = {"max-bandwidth": LINK_PLUS}
        if channels:
            params["multifd-channels"] = channels
        src, dst, port = _pair(lab, kind, caps, params, tls, ram=ram, boot=False,
                               src_extra=["-S", "-qtest", f"unix:{qtest_path}"])
        qtest = fill_over_qtest(listener, kind, size)
        try:
            info = _complete(src, dst, f"tcp:127.0.0.1:{port}")
        finally:
            qtest.close()
        seconds = info["total-time"] / 1000
        return {"total-time": info["total-time"], "GB/s": size / 1e9 / seconds}
    finally:
        lab.close()


def compressed(kind: VmmKind, mode: str, downtime: int) -> dict[str, float]:
    """One migration of the running built-in guest over the 50 MB/s link."""
    lab = VmLauncher()
    caps: list[str] = []
    params: dict[str, Any] = {"max-bandwidth": SLOW_LINK, "downtime-limit": downtime}
    if mode in ("zlib", "zstd"):
        caps = ["multifd"]
        params.update({"multifd-channels": 2, "multifd-compression": mode})
    elif mode == "xbzrle":
        caps = ["xbzrle"]
        params["xbzrle-cache-size"] = 256 << 20
    try:
        src, dst, port = _pair(lab, kind, caps, params, None)
        link = Link(port, rate=SLOW_LINK)
        try:
            src.wait_serial(b"B", timeout=120)
            started = time.perf_counter()
            info = _complete(src, dst, link.uri)
            wall = time.perf_counter() - started
            wire = link.bytes_forward()
        finally:
            link.close()
        dst.cmd("stop")
        if not (check := check_ab_ram(dst)).ok:
            raise SystemExit(f"{kind.label} {mode}: destination RAM inconsistent: "
                             f"{check.describe()}")
        return {"total-time": info["total-time"], "wall": wall * 1000,
                "wire MB": wire / 1e6, "downtime": info["downtime"]}
    finally:
        lab.close()


def main() -> None:
    parser = arguments(__doc__)
    parser.set_defaults(runs=3)
    parser.add_argument("--idle-ram", default="2G")
    parser.add_argument("--downtime", type=int, default=2500)
    parser.add_argument("--only", choices=["idle", "tls", "compression"], nargs="+",
                        default=["idle", "tls", "compression"])
    args = parser.parse_args()
    ours, theirs = kinds("tcg")
    idle_units = {"total-time": "ms", "GB/s": "GB/s"}

    def both(fn: Any, *rest: Any) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        return alternate(args.runs, lambda: fn(ours, *rest),
                         (lambda: fn(theirs, *rest)) if theirs else None)

    if "idle" in args.only:
        for channels in (1, 2, 4):
            a, b = both(idle, args.idle_ram, channels, None)
            report(f"idle {args.idle_ram}, tcp loopback, multifd {channels} channel(s)",
                   a, b, idle_units)
    if "tls" in args.only:
        with tempfile.TemporaryDirectory(prefix="livemig-bench-pki-") as pki:
            dirs = x509_dirs(Path(pki))
            for channels in (0, 4):
                a, b = both(idle, args.idle_ram, channels, dirs)
                label = f"multifd {channels} channels" if channels else "one stream"
                report(f"idle {args.idle_ram}, tcp loopback, TLS x509, {label}", a, b,
                       idle_units)
    if "compression" in args.only:
        for mode in ("none", "zlib", "zstd", "xbzrle"):
            a, b = both(compressed, mode, args.downtime)
            report(f"built-in guest over a 50 MB/s link, {mode}, downtime-limit "
                   f"{args.downtime} ms", a, b,
                   {"total-time": "ms", "wall": "ms", "wire MB": "MB", "downtime": "ms"})
    console.print("ratio = livemig / QEMU: below 1 is better for times and bytes, "
                  "above 1 is better for throughput")


if __name__ == "__main__":
    main()
