"""Migration parameters and capabilities, with QEMU 7.2's names, schema
types, defaults and range checks (each checked against QEMU 7.2 by
tests/test_migration_parameters.py).

A parameter's schema type is checked by the QMP layer (qmp/schema.py knows
``uint8``, ``uint32``, ``uint64``/``size``, ``bool``, ``str-or-null`` and
enums); the ranges below are QEMU's ``migrate_params_check``, applied in
its order to the merged parameters, with its underscore names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import MigrationError
from ..memory import PAGE_SIZE

MiB = 1 << 20

MULTIFD_COMPRESSION = ("none", "zlib", "zstd")
# QEMU 8.2's and 10.0's migration modes (MigMode): cpr-reboot stops the
# guest before anything is saved; cpr-transfer also hands guest RAM's
# descriptor to a new process on the same host (migration/cpr.py).
MODES = ("normal", "cpr-reboot", "cpr-transfer")

# name: (QAPI schema type, default)
PARAMETERS: dict[str, tuple[Any, Any]] = {
    "announce-initial": ("size", 50),
    "announce-max": ("size", 550),
    "announce-rounds": ("size", 5),
    "announce-step": ("size", 100),
    "compress-level": ("uint8", 1),
    "compress-threads": ("uint8", 8),
    "compress-wait-thread": ("bool", True),
    "decompress-threads": ("uint8", 2),
    "throttle-trigger-threshold": ("uint8", 50),
    "cpu-throttle-initial": ("uint8", 20),
    "cpu-throttle-increment": ("uint8", 10),
    "cpu-throttle-tailslow": ("bool", False),
    "tls-creds": ("str-or-null", ""),
    "tls-hostname": ("str-or-null", ""),
    "tls-authz": ("str-or-null", ""),
    "max-bandwidth": ("size", 128 * MiB),
    "downtime-limit": ("uint64", 300),
    "x-checkpoint-delay": ("uint32", 20000),
    "block-incremental": ("bool", False),
    "multifd-channels": ("uint8", 2),
    "xbzrle-cache-size": ("size", 64 * MiB),
    "max-postcopy-bandwidth": ("size", 0),
    "max-cpu-throttle": ("uint8", 99),
    "multifd-compression": (MULTIFD_COMPRESSION, "none"),
    "multifd-zlib-level": ("uint8", 1),
    "multifd-zstd-level": ("uint8", 1),
    # QEMU 8.1's dirty-limit: the limiter's period (ms) during a dirty-limit
    # migration, and the quota (MB/s) the migration sets on every vCPU.
    "x-vcpu-dirty-limit-period": ("uint64", 1000),
    "vcpu-dirty-limit": ("uint64", 1),
    "mode": (MODES, "normal"),
    # livemig's own (docs/convergence.md): the convergence policy, and the
    # deadline policy's total time in ms (0: none).
    "livemig-convergence-policy": ("str", "qemu"),
    "livemig-deadline": ("uint64", 0),
}

CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
    "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
    "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt", "dirty-limit", "mapped-ram",
)
# Capabilities that change what goes on the wire and are not implemented:
# refused when enabled, rather than silently ignored.
# (late-block-activate is accepted: it holds disk activation until `cont`
# on the destination, and livemig, which only reads the boot sector at
# start-up, never activates or locks a disk; libvirt sets it.)
UNSUPPORTED = {"rdma-pin-all", "compress", "x-colo", "block",
               "dirty-bitmaps", "release-ram", "zero-blocks"}

MAX_DOWNTIME_MS = 2000 * 1000
SIZE_MAX = (1 << 64) - 1


def parameter_schema() -> dict[str, Any]:
    return {"*" + name: typ for name, (typ, _default) in PARAMETERS.items()}


def _between(name: str, low: int, high: int, text: str) -> Callable[[dict[str, Any]], None]:
    def check(params: dict[str, Any]) -> None:
        if not low <= params[name] <= high:
            raise MigrationError(f"Parameter '{name.replace('-', '_')}' expects {text}")
    return check


def _xbzrle_cache(params: dict[str, Any]) -> None:
    size = params["xbzrle-cache-size"]
    if size < PAGE_SIZE or size & (size - 1):
        raise MigrationError("Parameter 'xbzrle_cache_size' expects a power of two no less "
                             "than the target page size")


def _max_cpu_throttle(params: dict[str, Any]) -> None:
    if not params["cpu-throttle-initial"] <= params["max-cpu-throttle"] <= 99:
        raise MigrationError("Parameter 'max_cpu_throttle' expects an integer in the range "
                             "of cpu_throttle_initial to 99")


def _dirty_limit_period(params: dict[str, Any]) -> None:
    if not 1 <= params["x-vcpu-dirty-limit-period"] <= 1000:
        raise MigrationError("Parameter 'x-vcpu-dirty-limit-period' expects a value between "
                             "1 and 1000")


def _vcpu_dirty_limit(params: dict[str, Any]) -> None:
    if params["vcpu-dirty-limit"] < 1:
        raise MigrationError("Parameter 'vcpu_dirty_limit' expects is invalid, it must "
                             "greater then 1 MB/S")  # QEMU 8.1's words, as they are


# QEMU 7.2's migrate_params_check, in its order (8.1's dirty-limit checks last).
CHECKS: tuple[Callable[[dict[str, Any]], None], ...] = (
    _between("compress-level", 0, 9, "a value between 0 and 9"),
    _between("compress-threads", 1, 255, "a value between 1 and 255"),
    _between("decompress-threads", 1, 255, "a value between 1 and 255"),
    _between("throttle-trigger-threshold", 1, 100, "an integer in the range of 1 to 100"),
    _between("cpu-throttle-initial", 1, 99, "an integer in the range of 1 to 99"),
    _between("cpu-throttle-increment", 1, 99, "an integer in the range of 1 to 99"),
    _between("max-bandwidth", 0, SIZE_MAX,
             "an integer in the range of 0 to 18446744073709551615 bytes/second"),
    _between("downtime-limit", 0, MAX_DOWNTIME_MS,
             "an integer in the range of 0 to (2000 * 1000) ms"),
    _between("multifd-channels", 1, 255, "a value between 1 and 255"),
    _between("multifd-zlib-level", 0, 9, "a value between 0 and 9"),
    _between("multifd-zstd-level", 0, 20, "a value between 0 and 20"),
    _xbzrle_cache,
    _max_cpu_throttle,
    _between("announce-initial", 0, 100000, "a value between 0 and 100000"),
    _between("announce-max", 0, 100000, "a value between 0 and 100000"),
    _between("announce-rounds", 0, 1000, "a value between 0 and 1000"),
    _between("announce-step", 1, 10000, "a value between 0 and 10000"),
    _dirty_limit_period,
    _vcpu_dirty_limit,
)


def _convergence_policy(params: dict[str, Any]) -> None:
    from .convergence import PolicyError, policy_class

    try:
        policy_class(params["livemig-convergence-policy"])
    except PolicyError as err:
        raise MigrationError(f"Parameter 'livemig-convergence-policy': {err}") from err


def validate(params: dict[str, Any]) -> None:
    """QEMU's range checks over a whole (merged) parameter set, then livemig's."""
    for check in CHECKS:
        check(params)
    _convergence_policy(params)


def _zero_copy(caps: dict[str, bool], params: dict[str, Any]) -> None:
    """QEMU 7.2's condition for zero-copy-send, checked as it checks it:
    when either the capabilities or the parameters change. (livemig sends
    pages without a copy on every plain socket anyway, splice.py; the
    capability is there so that what QEMU accepts, livemig accepts.)"""
    if caps["zero-copy-send"] and (not caps["multifd"]
                                   or params["multifd-compression"] != "none"
                                   or params["tls-creds"]):
        raise MigrationError("Zero copy only available for non-compressed non-TLS "
                             "multifd migration")


class Settings:
    """The parameters and capabilities of one VM (shared by both directions)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {name: default for name, (_t, default) in PARAMETERS.items()}
        self.caps: dict[str, bool] = dict.fromkeys(CAPABILITIES, False)

    def set_params(self, changes: dict[str, Any]) -> None:
        """Apply type-checked ``changes`` if the merged set passes every check."""
        merged = {**self.params, **{k: ("" if v is None else v) for k, v in changes.items()}}
        validate(merged)
        _zero_copy(self.caps, merged)
        self.params.update(merged)  # in place: running jobs hold this dict

    def set_caps(self, changes: list[dict[str, Any]]) -> None:
        for item in changes:
            name = item["capability"]
            if name not in self.caps:
                raise MigrationError(f"Parameter 'capability' does not accept value '{name}'")
            if item["state"] and name in UNSUPPORTED:
                raise MigrationError(f"Capability '{name}' is not supported by livemig")
        merged = {**self.caps, **{item["capability"]: bool(item["state"]) for item in changes}}
        if merged["postcopy-preempt"] and not merged["postcopy-ram"]:
            raise MigrationError("Postcopy preempt requires postcopy-ram")  # QEMU 7.2's words
        if merged["background-snapshot"]:
            for other in ("postcopy-ram", "multifd", "xbzrle", "mapped-ram", "x-ignore-shared",
                          "pause-before-switchover", "auto-converge", "dirty-limit",
                          "postcopy-preempt", "postcopy-blocktime"):
                if merged[other]:  # QEMU's words
                    raise MigrationError(f"Background-snapshot is not compatible with {other}")
        if merged["mapped-ram"]:
            for other, what in (("xbzrle", "xbzrle"), ("postcopy-ram", "postcopy")):
                if merged[other]:
                    raise MigrationError(f"Mapped-ram migration is incompatible with {what}")
        if merged["dirty-limit"] and merged["auto-converge"]:
            # QEMU 8.1's check and words. (It also wants KVM with a dirty
            # ring; livemig limits from its own tracking on any accelerator.)
            raise MigrationError("dirty-limit conflicts with auto-converge either of then "
                                 "available currently")
        _zero_copy(merged, self.params)
        self.caps.update(merged)
