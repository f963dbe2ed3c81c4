"""Migration parameters and capabilities, with QEMU 7.2's names, defaults
and range checks."""

from __future__ import annotations

from typing import Any

from ..errors import MigrationError

MiB = 1 << 20

# name: (schema type, default)
PARAMETERS: dict[str, tuple[str, Any]] = {
    "announce-initial": ("uint64", 50),
    "announce-max": ("uint64", 550),
    "announce-rounds": ("uint64", 5),
    "announce-step": ("uint64", 100),
    "compress-level": ("int", 1),
    "compress-threads": ("int", 8),
    "compress-wait-thread": ("bool", True),
    "decompress-threads": ("int", 2),
    "throttle-trigger-threshold": ("int", 50),
    "cpu-throttle-initial": ("int", 20),
    "cpu-throttle-increment": ("int", 10),
    "cpu-throttle-tailslow": ("bool", False),
    "tls-creds": ("str", ""),
    "tls-hostname": ("str", ""),
    "tls-authz": ("str", ""),
    "max-bandwidth": ("uint64", 128 * MiB),
    "downtime-limit": ("uint64", 300),
    "x-checkpoint-delay": ("int", 20000),
    "block-incremental": ("bool", False),
    "multifd-channels": ("int", 2),
    "xbzrle-cache-size": ("uint64", 64 * MiB),
    "max-postcopy-bandwidth": ("uint64", 0),
    "max-cpu-throttle": ("int", 99),
    "multifd-compression": ("str", "none"),
    "multifd-zlib-level": ("int", 1),
    "multifd-zstd-level": ("int", 1),
}

CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
    "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
    "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt",
)
# Capabilities that change what goes on the wire and are not implemented:
# refused when enabled, rather than silently ignored.
UNSUPPORTED = {"xbzrle", "rdma-pin-all", "compress", "x-colo", "block", "multifd",
               "dirty-bitmaps", "background-snapshot", "zero-copy-send", "postcopy-preempt",
               "auto-converge", "release-ram", "x-ignore-shared", "validate-uuid",
               "late-block-activate", "pause-before-switchover", "zero-blocks"}

MAX_DOWNTIME_MS = 2000 * 1000
_U64_MAX = (1 << 64) - 1


def parameter_schema() -> dict[str, str]:
    return {"*" + name: typ for name, (typ, _default) in PARAMETERS.items()}


def validate(changes: dict[str, Any]) -> None:
    """QEMU's range checks (messages use QEMU's underscore names)."""
    if "downtime-limit" in changes and changes["downtime-limit"] > MAX_DOWNTIME_MS:
        raise MigrationError("Parameter 'downtime_limit' expects an integer in the range "
                             "of 0 to (2000 * 1000) ms")
    for name in ("max-bandwidth", "max-postcopy-bandwidth"):
        if name in changes and changes[name] > _U64_MAX:
            raise MigrationError(f"Parameter '{name.replace('-', '_')}' expects an integer "
                                 "in the range of 0 to 18446744073709551615 bytes/second")
    for name in ("compress-level",):
        if name in changes and not 0 <= changes[name] <= 9:
            raise MigrationError("Parameter 'compress_level' expects a value between 0 and 9")


class Settings:
    """The parameters and capabilities of one VM (shared by both directions)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {name: default for name, (_t, default) in PARAMETERS.items()}
        self.caps: dict[str, bool] = dict.fromkeys(CAPABILITIES, False)

    def set_params(self, changes: dict[str, Any]) -> None:
        validate(changes)
        self.params.update(changes)

    def set_caps(self, changes: list[dict[str, Any]]) -> None:
        for item in changes:
            name = item["capability"]
            if name not in self.caps:
                raise MigrationError(f"Parameter 'capability' does not accept value '{name}'")
            if item["state"] and name in UNSUPPORTED:
                raise MigrationError(f"Capability '{name}' is not supported by livemig")
        for item in changes:
            self.caps[item["capability"]] = bool(item["state"])
