"""QEMU 7.2's HMP ``info`` views of migration, as text, from the answers of
the QMP commands they show (query-migrate, query-migrate-capabilities,
query-migrate-parameters, query-dirty-rate).

The lines, labels, units and the conditions under which a line appears are
QEMU 7.2's (tests/test_hmp.py compares them with QEMU's output line by
line); the values are livemig's. A leaf module, like ``sizes``: the QMP
layer's ``human-monitor-command`` and the lab's demo both use it.
"""

from __future__ import annotations

from typing import Any

# QEMU's migration object properties, printed first by ``info migrate``.
# livemig has no such knobs: these are the values that describe it.
GLOBALS = (
    ("store-global-state", "on"),
    ("only-migratable", "off"),
    ("send-configuration", "on"),
    ("send-section-footer", "on"),
    ("decompress-error-check", "on"),
    ("clear-bitmap-shift", "18"),
)

# query-migrate-parameters' members as QEMU 7.2's HMP prints them, in its
# order, with their units; then QEMU 8.1's and 8.2's, then livemig's own.
_PARAMETER_UNITS = (
    ("announce-initial", " ms"), ("announce-max", " ms"), ("announce-rounds", ""),
    ("announce-step", " ms"), ("compress-level", ""), ("compress-threads", ""),
    ("compress-wait-thread", ""), ("decompress-threads", ""),
    ("throttle-trigger-threshold", ""), ("cpu-throttle-initial", ""),
    ("cpu-throttle-increment", ""), ("cpu-throttle-tailslow", ""),
    ("max-cpu-throttle", ""), ("tls-creds", ""), ("tls-hostname", ""),
    ("max-bandwidth", " bytes/second"), ("downtime-limit", " ms"),
    ("x-checkpoint-delay", " ms"), ("block-incremental", ""), ("multifd-channels", ""),
    ("multifd-compression", ""), ("xbzrle-cache-size", " bytes"),
    ("max-postcopy-bandwidth", ""), ("tls-authz", ""),
    ("x-vcpu-dirty-limit-period", " ms"), ("vcpu-dirty-limit", " MB/s"), ("mode", ""),
    ("livemig-convergence-policy", ""), ("livemig-deadline", " ms"),
)
_QUOTED = {"tls-creds", "tls-hostname", "tls-authz"}


def _lines(rows: list[tuple[str, str]]) -> str:
    return "".join(f"{label}: {value}\r\n" for label, value in rows)


def _onoff(value: Any) -> str:
    return "on" if value else "off"


def _kbytes(value: Any) -> str:
    return f"{int(value or 0) >> 10} kbytes"


def _socket_address(address: dict[str, Any]) -> str:
    kind = address.get("type")
    if kind == "unix":
        return f"unix:{address.get('path', '')}"
    if kind == "inet":
        return f"tcp:{address.get('host', '')}:{address.get('port', '')}"
    if kind == "vsock":
        return f"vsock:{address.get('cid', '')}:{address.get('port', '')}"
    return f"fd:{address.get('str', '')}"


def migrate_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``info migrate`` after its globals: the status, times and RAM figures
    of a query-migrate answer, each line only where QEMU prints it."""
    rows: list[tuple[str, str]] = []
    status = info.get("status")
    if status not in (None, "none"):   # QEMU's query-migrate has no status then
        error = info.get("error-desc")
        rows.append(("Migration status", f"{status} ({error})" if status == "failed"
                     and error else str(status)))
        rows.append(("total time", f"{info.get('total-time', 0)} ms"))
        if "expected-downtime" in info:
            rows.append(("expected downtime", f"{info['expected-downtime']} ms"))
        if "downtime" in info:
            rows.append(("downtime", f"{info['downtime']} ms"))
        if "setup-time" in info:
            rows.append(("setup", f"{info['setup-time']} ms"))
    ram = info.get("ram")
    if ram is not None:
        rows += [
            ("transferred ram", _kbytes(ram.get("transferred"))),
            ("throughput", f"{float(ram.get('mbps', 0)):.2f} mbps"),
            ("remaining ram", _kbytes(ram.get("remaining"))),
            ("total ram", _kbytes(ram.get("total"))),
            ("duplicate", f"{ram.get('duplicate', 0)} pages"),
            ("skipped", f"{ram.get('skipped', 0)} pages"),
            ("normal", f"{ram.get('normal', 0)} pages"),
            ("normal bytes", _kbytes(ram.get("normal-bytes"))),
            ("dirty sync count", str(ram.get("dirty-sync-count", 0))),
            ("page size", _kbytes(ram.get("page-size"))),
            ("multifd bytes", _kbytes(ram.get("multifd-bytes"))),
            ("pages-per-second", str(ram.get("pages-per-second", 0))),
        ]
        optional = (("dirty-pages-rate", "dirty pages rate", lambda v: f"{v} pages"),
                    ("postcopy-requests", "postcopy request count", str),
                    ("precopy-bytes", "precopy ram", _kbytes),
                    ("downtime-bytes", "downtime ram", _kbytes),
                    ("postcopy-bytes", "postcopy ram", _kbytes),
                    ("dirty-sync-missed-zero-copy", "Zero-copy-send fallbacks happened",
                     lambda v: f"{v} times"))
        for key, label, show in optional:
            if ram.get(key):
                rows.append((label, show(ram[key])))
    cache = info.get("xbzrle-cache")
    if cache is not None:
        rows += [
            ("cache size", f"{cache.get('cache-size', 0)} bytes"),
            ("xbzrle transferred", _kbytes(cache.get("bytes"))),
            ("xbzrle pages", f"{cache.get('pages', 0)} pages"),
            ("xbzrle cache miss", f"{cache.get('cache-miss', 0)} pages"),
            ("xbzrle cache miss rate", f"{float(cache.get('cache-miss-rate', 0)):.2f}"),
            ("xbzrle encoding rate", f"{float(cache.get('encoding-rate', 0)):.2f}"),
            ("xbzrle overflow", str(cache.get("overflow", 0))),
        ]
    if "cpu-throttle-percentage" in info:
        rows.append(("cpu throttle percentage", str(info["cpu-throttle-percentage"])))
    if "postcopy-blocktime" in info:
        rows.append(("postcopy blocktime", str(info["postcopy-blocktime"])))
    if "postcopy-vcpu-blocktime" in info:
        rows.append(("postcopy vcpu blocktime",
                     ",".join(str(v) for v in info["postcopy-vcpu-blocktime"])))
    if "dirty-limit-throttle-time-per-round" in info:   # QEMU 8.1's
        rows.append(("dirty-limit throttle time",
                     f"{info['dirty-limit-throttle-time-per-round']} us"))
    if "dirty-limit-ring-full-time" in info:
        rows.append(("dirty-limit ring full time", f"{info['dirty-limit-ring-full-time']} us"))
    return rows


def info_migrate(info: dict[str, Any]) -> str:
    text = "globals:\r\n" + _lines(list(GLOBALS))
    rows = migrate_rows(info)
    # QEMU prints the listening address between the times and the RAM.
    split = next((i for i, (label, _v) in enumerate(rows) if label == "transferred ram"),
                 len(rows))
    text += _lines(rows[:split])
    addresses = info.get("socket-address")
    if addresses:
        text += "socket address: [\r\n"
        text += "".join(f"\t{_socket_address(a)}\r\n" for a in addresses)
        text += "]\r\n"
    return text + _lines(rows[split:])


def info_migrate_capabilities(caps: list[dict[str, Any]]) -> str:
    return _lines([(c["capability"], _onoff(c["state"])) for c in caps])


def info_migrate_parameters(params: dict[str, Any]) -> str:
    rows = []
    for name, unit in _PARAMETER_UNITS:
        if name not in params:
            continue
        value = params[name]
        if isinstance(value, bool):
            shown = _onoff(value)
        elif name in _QUOTED:
            shown = f"'{value or ''}'"
        else:
            shown = f"{value}{unit}"
        rows.append((name, shown))
    return _lines(rows)


def info_dirty_rate(info: dict[str, Any]) -> str:
    measured = info.get("status") == "measured"
    rows = [
        ("Status", str(info.get("status", "unstarted"))),
        ("Start Time", f"{info.get('start-time', 0)} (ms)"),
        ("Sample Pages", f"{info.get('sample-pages', 0)} (per GB)"),
        ("Period", f"{info.get('calc-time', 0)} (sec)"),
        ("Mode", str(info.get("mode", "page-sampling"))),
        ("Dirty rate", f"{info.get('dirty-rate', 0)} (MB/s)" if measured else "(not ready)"),
    ]
    text = _lines(rows)
    for vcpu in info.get("vcpu-dirty-rate", []) if measured else []:
        text += f"vcpu[{vcpu.get('id', 0)}], Dirty rate: {vcpu.get('dirty-rate', 0)} (MB/s)\r\n"
    return text
