"""Unit tests of the pure pieces: parsers, codecs, device models."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.accel.cpustate import CpuState, Segment
from livemig.chardev.spec import options_from_chardev_arg, options_from_short, split_options
from livemig.cli.options import parse
from livemig.devices import Uart16550
from livemig.devices.system_control import Port92State
from livemig.devices.uart import UartState
from livemig.errors import AccelError, ConfigError, DeviceError, QmpError
from livemig.migration.pages import runs
from livemig.migration.postcopy_dest import quantile
from livemig.qmp.jsonstream import JsonSplitter, ParseError
from livemig.qmp.schema import check_arguments
from livemig.sizes import parse_size


def _values(chunks: list[bytes]) -> list[object]:
    splitter = JsonSplitter()
    return [v for chunk in chunks for v in splitter.feed(chunk)]


def test_json_splitter_handles_framing_quotes_and_errors() -> None:
    assert _values([b'{"a": 1}{"b"', b': "}{"}  [1, 2]']) == [{"a": 1}, {"b": "}{"}, [1, 2]]
    assert _values([b"{'execute': 'x', 'q': 'it\\'s \"ok\"'}"]) == \
        [{"execute": "x", "q": 'it\'s "ok"'}]
    bad = _values([b"{bad} 123 }"])
    assert isinstance(bad[0], ParseError) and bad[1] == 123 and isinstance(bad[2], ParseError)


def test_schema_messages_match_qemu() -> None:
    schema = {"uri": "str", "*n": "int", "*caps": [{"capability": "str", "state": "bool"}]}
    with pytest.raises(QmpError, match="Parameter 'uri' is missing"):
        check_arguments(schema, {})
    with pytest.raises(QmpError, match="Parameter 'x' is unexpected"):
        check_arguments(schema, {"uri": "u", "x": 1})
    with pytest.raises(QmpError, match="expected: integer"):
        check_arguments(schema, {"uri": "u", "n": True})
    with pytest.raises(QmpError, match="expected: boolean"):
        check_arguments(schema, {"uri": "u", "caps": [{"capability": "c", "state": 1}]})
    assert check_arguments({"v": "uint64"}, {"v": -1}) == {"v": 2**64 - 1}


@pytest.mark.parametrize(("text", "size"), [("150M", 150 << 20), ("1G", 1 << 30),
                                             ("512", 512), ("1.5k", 1536), ("0x10", 16)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_command_line_rules() -> None:
    opts = parse(["-machine", "accel=qtest", "-machine", "accel=kvm:tcg", "-m", "150"])
    assert opts.accelerators == ["kvm", "tcg"] and opts.ram_size == 150 << 20
    assert parse(["-enable-kvm", "-machine", "accel=tcg"]).accelerators == ["kvm"]
    assert parse([]).accelerators == ["tcg"]
    assert parse(["-name", "guest=vm1,debug-threads=on"]).name == "vm1"
    with pytest.raises(ConfigError, match="invalid option"):
        parse(["-bogus"])


def test_chardev_spellings() -> None:
    assert split_options("path=/a,,b,server") == ["path=/a,b", "server"]
    opts = options_from_chardev_arg("socket,path=/tmp/q,nowait,id=char0,server")
    assert opts == {"backend": "socket", "path": "/tmp/q", "wait": "off", "id": "char0",
                    "server": "on"}
    assert options_from_short("tcp:[::1]:4444,server=on", "x")["host"] == "::1"
    assert options_from_short("file:/tmp/s", "serial0")["path"] == "/tmp/s"


def test_uart_state_round_trip_and_output() -> None:
    out: list[bytes] = []
    uart = Uart16550(out.append)
    uart.write(3, 1, 0x83)   # DLAB on
    uart.write(0, 1, 0x01)   # divisor low
    uart.write(3, 1, 0x03)   # DLAB off, 8N1
    uart.write(0, 1, ord("A"))
    assert out == [b"A"] and uart.read(5, 1) & 0x60 == 0x60
    copy = Uart16550(out.append)
    copy.from_state(UartState.from_dict(uart.state().to_dict()))
    assert copy.state() == uart.state()
    for bad in ({"ier": "x"}, {**uart.state().to_dict(), "ier": 256},
                {**uart.state().to_dict(), "ier": True}, []):
        with pytest.raises(DeviceError):
            UartState.from_dict(bad)


def test_register_states_are_values() -> None:
    """Device states (plain classes, not dataclasses: start-up) behave as
    frozen value records: by position or name, equal by value, immutable."""
    state = UartState(1, 2, dll=12)
    assert (state.ier, state.lcr, state.dll, state.fcr) == (1, 2, 12, 0)
    assert state == UartState(ier=1, lcr=2, dll=12) and state != UartState(ier=1)
    assert hash(state) == hash(UartState(ier=1, lcr=2, dll=12))
    assert list(state.to_dict()) == list(UartState.REGISTERS) == list(
        ("ier", "lcr", "mcr", "scr", "dll", "dlm", "fcr"))
    assert Port92State(2).value == 2 and Port92State().to_dict() == {"value": 0}
    with pytest.raises(AttributeError):
        state.ier = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        UartState(1, 2, 3, 4, 5, 6, 7, 8)    # one value too many
    with pytest.raises(TypeError):
        UartState(1, ier=1)                  # ier twice
    with pytest.raises(TypeError):
        UartState(x=1)                       # no such register


def test_descriptor_decoding_and_cpu_state() -> None:
    flat_code = Segment.from_descriptor(0x08, 0x00CF9A000000FFFF)
    assert (flat_code.base, flat_code.limit, flat_code.type, flat_code.db, flat_code.g) == \
        (0, 0xFFFFFFFF, 0xA, 1, 1)
    state = CpuState.boot()
    assert tuple(vars(flat_code)) == Segment.FIELDS   # the kvm backend relies on both
    assert CpuState.from_dict(state.to_dict()) == state
    data = state.to_dict()
    data["segments"]["cs"]["base"] = 0x1000   # to_dict shares nothing with the state
    data["gprs"]["rax"] = 1
    assert state.segments["cs"].base == 0 and state.gprs["rax"] == 0
    assert CpuState.from_dict(data) != state
    with pytest.raises(AccelError):
        CpuState.from_dict({"gprs": {}})


def test_runs_of_pages() -> None:
    mask = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
    starts, lengths = runs(mask)
    assert starts.tolist() == [1, 4, 7] and lengths.tolist() == [2, 1, 1]
    assert runs(np.zeros(4, dtype=bool))[0].size == 0


def test_return_path_messages_round_trip_and_bad_ones_are_refused() -> None:
    import socket

    from livemig.errors import StreamError
    from livemig.migration import codec
    from livemig.migration.channel import Channel

    pages = 1000
    limits = codec.Limits(pages)
    placed = np.zeros(pages, dtype=bool)
    placed[[0, 7, 8, 999]] = True
    a, b = socket.socketpair()
    writer, reader = Channel(a), Channel(b)
    try:
        writer.send([codec.PageRequest(5, 3).encode(),
                     codec.PagesHeld.from_mask(placed).encode(), codec.Done().encode()])
        assert codec.read_return(reader.reader, limits) == codec.PageRequest(5, 3)
        have = codec.read_return(reader.reader, limits)
        assert isinstance(have, codec.PagesHeld) and (have.mask(pages) == placed).all()
        assert isinstance(codec.read_return(reader.reader, limits), codec.Done)
        short = codec.PagesHeld.from_mask(np.zeros(8, dtype=bool)).encode()
        for bad, why in ((codec.PageRequest(pages - 1, 2).encode(), "outside guest RAM"),
                         (codec.PageRequest(3, 0).encode(), "outside guest RAM"),
                         (short + b"\0", "page bitmap of 1 bytes"),
                         (b"\x00", "unknown return-path message type 0x00")):
            writer.send([bad])
            with pytest.raises(StreamError, match=why):
                codec.read_return(reader.reader, limits)
    finally:
        writer.close()
        reader.close()


def test_fault_latency_summary_and_blocktime() -> None:
    from livemig.migration.postcopy_dest import FaultLatency

    latency = FaultLatency([101])
    assert latency.summary() == {"count": 0}
    latency.add(np.array([0.001, 0.003, 0.0005]), np.array([101, 101, 202], dtype=np.uint32))
    total, per_vcpu = latency.blocktime_ms()
    assert per_vcpu == [4] and total == 4            # thread 202 is not a vCPU
    summary = latency.summary()
    assert summary["count"] == 3 and summary["max-us"] == 3000.0
    assert summary["p50-us"] == 1000.0 and summary["mean-us"] == 1500.0


def test_memory_backend_objects_check_their_properties() -> None:
    """object-add / -object memory-backend-*: every bad property is an
    ObjectError with the cause; a good one keeps QEMU's defaults."""
    from livemig.objects.memory_backend import FACTORIES
    from livemig.objects.registry import ObjectError

    memfd, file = FACTORIES["memory-backend-memfd"], FACTORIES["memory-backend-file"]
    bad = [(memfd, {"size": -1}, "expects uint64"), (memfd, {"size": True}, "expects uint64"),
           (memfd, {"size": 1 << 64}, "expects uint64"), (memfd, {"size": 0}, "not set"),
           (memfd, {}, "not set"), (memfd, {"size": 4097}, "multiple of the page size"),
           (memfd, {"size": "lots"}, "not a size"), (memfd, {"size": 4096, "x": 1}, "'x'"),
           (memfd, {"size": 4096, "share": "maybe"}, "'share'"),
           (file, {"size": 4096}, "mem-path"), (file, {"size": 4096, "mem-path": ""}, "mem-path"),
           (FACTORIES["memory-backend-ram"], {"size": 4096, "share": True}, "memfd")]
    for factory, props, words in bad:
        with pytest.raises(ObjectError, match=words):
            factory("m", props)
    assert memfd("m", {"size": "64M"}).spec.share is True        # memfd: shared by default
    spec = file("f", {"size": 8192, "mem-path": "/x"}).spec
    assert (spec.share, spec.size, spec.mem_path) == (False, 8192, "/x")


def test_migration_channels_read_as_uris() -> None:
    """QEMU 8.2's MigrationChannel lists: each address becomes the URI that
    says the same, so one parser reads both spellings."""
    from livemig.errors import MigrationError
    from livemig.migration.uri import channel_uri, parse_channels

    def addr(**fields: object) -> dict[str, object]:
        return {"channel-type": "main", "addr": fields}

    assert channel_uri(addr(transport="socket", type="unix", path="/s")) == ("main", "unix:/s")
    assert channel_uri(addr(transport="socket", type="inet", host="::1", port="7")) == \
        ("main", "tcp:[::1]:7")
    assert channel_uri(addr(transport="socket", type="fd", str="mig")) == ("main", "fd:mig")
    assert channel_uri(addr(transport="exec", args=["cat", "a b"])) == \
        ("main", "exec:cat 'a b'")
    assert channel_uri(addr(transport="file", filename="/f", offset=4096)) == \
        ("main", "file:/f,offset=4096")
    main, cpr = parse_channels([addr(transport="file", filename="/f"),
                                {"channel-type": "cpr", "addr": {
                                    "transport": "socket", "type": "unix", "path": "/c"}}])
    assert main == "file:/f" and cpr is not None and cpr.target == "/c"
    for bad, words in (
            ([], "no main entry"),
            ([addr(transport="socket", type="unix")], "Parameter 'addr.path' is missing"),
            ([addr(transport="socket", type="unix", path=3)], "expected: string"),
            ([addr(transport="exec", args=[])], "non-empty list"),
            ([addr(transport="file", filename="/f", offset=-1)], "uint64"),
            ([addr(transport="rdma", host="h", port="1")], "RDMA"),
            ([{"channel-type": "side", "addr": {}}], "'channel-type' does not accept"),
            ([{"channel-type": "main", "addr": {}, "x": 1}], "'x' is unexpected"),
            (["unix:/s"], "expected: object")):
        with pytest.raises(MigrationError, match=words):
            parse_channels(bad)


def test_whole_milliseconds_are_counted_as_qemu_counts_them() -> None:
    """A 2.5 ms pause reads 2 or 3 ms depending on where it falls, 2.5 on
    average, as QEMU's difference of millisecond clocks does; truncating the
    difference read 2 every time, half a millisecond against livemig."""
    from livemig.migration.stats import ms_since

    starts = [100.0 + i / 1000 / 97 for i in range(97)]   # spread across a millisecond
    readings = [ms_since(s, s + 0.0025) for s in starts]
    assert set(readings) == {2, 3}
    assert abs(sum(readings) / len(readings) - 2.5) < 0.05
    assert ms_since(5.0, 5.0) == 0


def test_a_zero_run_kept_present_writes_only_pages_that_had_data() -> None:
    """A postcopy-capable destination loads a zero run without dropping
    pages (a dropped page would fault as missing after the switch) and
    without allocating the ones never touched: RAM reads zero, every page
    is mapped (pagemap's present bit), and RSS grows only by the pages
    that held data."""
    from livemig.memory.ram import GuestRam

    def rss_kib() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4

    size, page = 64 << 20, 4096
    ram = GuestRam(size)
    try:
        ram.view[10 * page:20 * page] = b"\x5a" * (10 * page)
        before = rss_kib()
        ram.zero(0, size, keep_present=True)
        grown_kib = rss_kib() - before
        assert not np.frombuffer(ram.view, dtype=np.uint64).any()
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek((ram.address // page) * 8)
            entries = np.frombuffer(pagemap.read(8 * (size // page)), dtype=np.uint64)
        assert ((entries >> np.uint64(63)) & np.uint64(1)).all(), "a page was left unmapped"
        assert grown_kib < 16 << 10, f"RSS grew by {grown_kib} KiB for 40 KiB of data"
    finally:
        ram.close()


def test_vcpu_sleep_is_told_from_running_by_the_kernel_accounting() -> None:
    """lab/vcpu_time.py on real threads named as vCPUs: one that sleeps
    100 ms reads ~100 ms asleep, one that spins reads ~0."""
    import threading
    import time

    from livemig.lab import vcpu_time
    from livemig.thread_names import set_os_name

    def measure(work: str) -> float:
        named, go, done = threading.Event(), threading.Event(), threading.Event()

        def vcpu() -> None:
            set_os_name("CPU 0/TEST")
            named.set()
            go.wait()
            if work == "sleep":
                time.sleep(0.1)
            else:
                end = time.monotonic() + 0.1
                while time.monotonic() < end:
                    pass
            done.wait()

        thread = threading.Thread(target=vcpu)
        thread.start()
        try:
            assert named.wait(10)
            first = vcpu_time.sample(os.getpid())
            go.set()
            time.sleep(0.1)
            last = vcpu_time.sample(os.getpid())
        finally:
            done.set()
            thread.join()
        asleep = vcpu_time.asleep_ms(first, last)
        assert asleep is not None, "no thread named CPU n found"
        return asleep

    assert measure("sleep") > 60
    assert measure("spin") < 40


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from([0.0, 0.5, 0.99, 1.0]))
def test_fault_latency_quantile_is_numpys_default(values: list[float], q: float) -> None:
    """query-migrate's p50/p99 are np.percentile's figures, without its cost."""
    ordered = np.sort(np.array(values))
    assert quantile(ordered, q) == pytest.approx(float(np.percentile(ordered, q * 100)),
                                                 rel=1e-9, abs=1e-9)
