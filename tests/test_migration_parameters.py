"""migrate-set-parameters: every type and range QEMU 7.2 checks, with its
words (the expectations were read off QEMU 7.2; the test runs on both)."""

from __future__ import annotations

import pytest

from livemig.lab import VmLauncher, VmmKind

U8 = ["compress-level", "compress-threads", "decompress-threads", "throttle-trigger-threshold",
      "cpu-throttle-initial", "cpu-throttle-increment", "multifd-channels", "max-cpu-throttle",
      "multifd-zlib-level", "multifd-zstd-level"]


def _type_cases() -> list[tuple[str, object, str | None]]:
    cases: list[tuple[str, object, str | None]] = []
    for name in U8:
        cases += [(name, -1, f"Parameter '{name}' expects uint8_t"),
                  (name, 256, f"Parameter '{name}' expects uint8_t"),
                  (name, 2**64, f"Parameter '{name}' expects uint64"),
                  (name, 2**80, f"Parameter '{name}' expects uint64")]
    for name in ("announce-initial", "announce-max", "announce-rounds", "announce-step",
                 "xbzrle-cache-size", "max-bandwidth", "max-postcopy-bandwidth",
                 "downtime-limit", "x-checkpoint-delay"):
        cases.append((name, 2**64, f"Parameter '{name}' expects uint64"))
    cases += [("x-checkpoint-delay", -1, "Parameter 'x-checkpoint-delay' expects uint32_t"),
              ("x-checkpoint-delay", 2**32, "Parameter 'x-checkpoint-delay' expects uint32_t"),
              ("x-checkpoint-delay", 4096, None),
              ("multifd-compression", "bogus",
               "Parameter 'multifd-compression' does not accept value 'bogus'"),
              ("multifd-compression", 1,
               "Invalid parameter type for 'multifd-compression', expected: string"),
              ("multifd-compression", "zstd", None),
              ("max-bandwidth", -1, None)]   # QEMU wraps it to 2^64 - 1
    return cases


def _range(name: str, text: str) -> str:
    return f"Parameter '{name}' expects {text}"


RANGE_CASES: list[tuple[str, object, str | None]] = [
    ("compress-level", 10, _range("compress_level", "a value between 0 and 9")),
    ("compress-threads", 0, _range("compress_threads", "a value between 1 and 255")),
    ("decompress-threads", 0, _range("decompress_threads", "a value between 1 and 255")),
    ("throttle-trigger-threshold", 0,
     _range("throttle_trigger_threshold", "an integer in the range of 1 to 100")),
    ("cpu-throttle-initial", 100,
     _range("cpu_throttle_initial", "an integer in the range of 1 to 99")),
    ("cpu-throttle-increment", 0,
     _range("cpu_throttle_increment", "an integer in the range of 1 to 99")),
    ("multifd-channels", 0, _range("multifd_channels", "a value between 1 and 255")),
    ("max-cpu-throttle", 100, _range("max_cpu_throttle",
                                     "an integer in the range of cpu_throttle_initial to 99")),
    ("max-cpu-throttle", 10, _range("max_cpu_throttle",
                                    "an integer in the range of cpu_throttle_initial to 99")),
    ("xbzrle-cache-size", 4095, _range("xbzrle_cache_size",
                                       "a power of two no less than the target page size")),
    ("xbzrle-cache-size", 12288, _range("xbzrle_cache_size",
                                        "a power of two no less than the target page size")),
    ("xbzrle-cache-size", -1, _range("xbzrle_cache_size",
                                     "a power of two no less than the target page size")),
    ("xbzrle-cache-size", 4096, None),
    ("announce-initial", 100001, _range("announce_initial", "a value between 0 and 100000")),
    ("announce-max", -1, _range("announce_max", "a value between 0 and 100000")),
    ("announce-rounds", 1001, _range("announce_rounds", "a value between 0 and 1000")),
    ("announce-step", 0, _range("announce_step", "a value between 0 and 10000")),
    ("announce-step", 10001, _range("announce_step", "a value between 0 and 10000")),
    ("downtime-limit", -1, _range("downtime_limit",
                                  "an integer in the range of 0 to (2000 * 1000) ms")),
    ("downtime-limit", 2_000_001, _range("downtime_limit",
                                         "an integer in the range of 0 to (2000 * 1000) ms")),
]

CASES = _type_cases() + RANGE_CASES


def test_parameter_types_and_ranges(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "vm")
    before = vm.cmd("query-migrate-parameters")
    wrong = []
    for name, value, expected in CASES:
        answer = vm.raw("migrate-set-parameters", {name: value})
        got = answer.get("error", {}).get("desc")
        if got != expected:
            wrong.append((name, value, expected, got))
        if expected is None:   # accepted: put the default back for the next case
            vm.cmd("migrate-set-parameters", **{name: before[name]})
    assert not wrong, "\n".join(map(str, wrong))
    assert vm.cmd("query-migrate-parameters") == before   # refusals changed nothing


@pytest.mark.parametrize("name,value,text", [
    ("multifd-zlib-level", 100, "a value between 0 and 9"),
    ("multifd-zstd-level", 21, "a value between 0 and 20"),
])
def test_multifd_levels_are_checked(vmm_any_accel: VmmKind, lab: VmLauncher, name: str,
                                    value: int, text: str) -> None:
    """A deliberate difference: QEMU 7.2 means to check these levels but its
    check never sees them (it accepts 100); livemig refuses, with the words
    QEMU's own check would use."""
    vm = lab.start(vmm_any_accel, "vm")
    answer = vm.raw("migrate-set-parameters", {name: value})
    if vm_is_qemu(vmm_any_accel):
        assert "return" in answer
    else:
        assert answer["error"]["desc"] == f"Parameter '{name.replace('-', '_')}' expects {text}"


def vm_is_qemu(kind: VmmKind) -> bool:
    return kind.is_qemu


@pytest.mark.parametrize("value", [None, "creds0"])
def test_tls_parameters_take_strings_and_null(vmm_any_accel: VmmKind, lab: VmLauncher,
                                              value: str | None) -> None:
    vm = lab.start(vmm_any_accel, "vm")
    vm.cmd("migrate-set-parameters", **{"tls-hostname": value})
    assert vm.cmd("query-migrate-parameters")["tls-hostname"] == (value or "")
