"""The migration core without a VM: the status machines and the codec.

The codec's property tests feed the decoder arbitrary and mutated bytes:
it must give back a record that lies inside the RAM it was told about, or
a StreamError, and never any other exception.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livemig.errors import StreamError
from livemig.migration import codec
from livemig.migration.status import (
    DESTINATION_TRANSITIONS,
    SOURCE_TRANSITIONS,
    IllegalTransition,
    Status,
    StatusMachine,
)

S = Status
PAGES = 64
LIMITS = codec.Limits(PAGES, max_state=1 << 16)


# --- status machines ---------------------------------------------------------------


def _machine(table: dict[Status, frozenset[Status]] = SOURCE_TRANSITIONS
             ) -> tuple[StatusMachine, list[str]]:
    seen: list[str] = []
    return StatusMachine("source", table, lambda s: seen.append(s.value)), seen


def test_transitions_follow_the_table_and_announce_in_order() -> None:
    machine, seen = _machine()
    assert machine.transition(S.NONE, S.SETUP)
    assert machine.transition(S.SETUP, S.ACTIVE)
    assert not machine.transition(S.SETUP, S.FAILED)      # lost race: not an error
    with pytest.raises(IllegalTransition):
        machine.transition(S.ACTIVE, S.POSTCOPY_PAUSED)   # not in the table: a bug
    assert machine.transition(S.ACTIVE, S.POSTCOPY_ACTIVE)
    assert machine.transition(S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED)
    assert seen == ["setup", "active", "postcopy-active", "postcopy-paused"]


def test_every_table_entry_is_reachable_and_terminal_states_stay() -> None:
    for table in (SOURCE_TRANSITIONS, DESTINATION_TRANSITIONS):
        reached = {S.NONE}
        frontier = [S.NONE]
        while frontier:
            for nxt in table.get(frontier.pop(), ()):
                if nxt not in reached:
                    reached.add(nxt)
                    frontier.append(nxt)
        assert set(table) <= reached
        for terminal in (S.COMPLETED, S.FAILED):
            assert terminal not in table


def test_cancel_after_commit_is_refused_and_crash_pauses_after_switchover() -> None:
    machine, _ = _machine()
    machine.transition(S.NONE, S.SETUP)
    machine.transition(S.SETUP, S.ACTIVE)
    assert machine.commit()
    assert not machine.transition(S.ACTIVE, S.CANCELLING)
    assert machine.transition(S.ACTIVE, S.COMPLETED)
    other, _ = _machine()
    other.transition(S.NONE, S.SETUP)
    other.transition(S.SETUP, S.ACTIVE)
    other.transition(S.ACTIVE, S.POSTCOPY_ACTIVE)
    assert other.crash("internal error: x") == S.POSTCOPY_PAUSED
    third, _ = _machine()
    third.transition(S.NONE, S.SETUP)
    assert third.crash("internal error: x") == S.FAILED
    assert third.crash("again") == S.FAILED   # terminal: nothing moves


def _race_once() -> None:
    machine, seen = _machine()
    machine.transition(S.NONE, S.SETUP)
    machine.transition(S.SETUP, S.ACTIVE)
    wins: list[Status] = []
    barrier = threading.Barrier(2)

    def race(new: Status) -> None:
        barrier.wait()
        if machine.transition(S.ACTIVE, new):
            wins.append(new)

    threads = [threading.Thread(target=race, args=(new,)) for new in (S.CANCELLING, S.COMPLETED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and seen[-1] == wins[0].value


def test_compare_and_set_has_one_winner() -> None:
    for _ in range(200):
        _race_once()


# --- the codec -----------------------------------------------------------------------------

runs = st.tuples(st.integers(0, PAGES - 1), st.integers(1, PAGES)).filter(
    lambda r: r[0] + r[1] <= PAGES)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)
records = st.one_of(
    runs.map(lambda r: codec.PageRun(*r)),
    runs.map(lambda r: codec.ZeroRun(*r)),
    st.integers(0, 2**64 - 1).map(codec.Sync),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(codec.State),
    st.sampled_from([codec.End(), codec.PostcopyAdvise(), codec.PostcopyRun(),
                     codec.Resume()]),
    st.lists(runs, max_size=6).map(lambda rs: codec.Discard.from_runs(
        np.array([a for a, _ in rs], dtype=np.int64), np.array([b for _, b in rs],
                                                               dtype=np.int64))),
)
return_records = st.one_of(
    runs.map(lambda r: codec.PageRequest(*r)),
    st.lists(st.booleans(), min_size=PAGES, max_size=PAGES).map(
        lambda bits: codec.PagesHeld.from_mask(np.array(bits, dtype=bool))),
    st.just(codec.Done()),
    st.just(codec.SharedRamAccepted()),
)


def _encoded(record: object) -> bytes:
    data = record.encode()  # type: ignore[attr-defined]
    if isinstance(record, codec.PageRun):
        data += bytes(range(256)) * 16 * record.count
    return data


def _same(a: object, b: object) -> bool:
    if isinstance(a, codec.Discard):
        return isinstance(b, codec.Discard) and a.runs() == b.runs()
    return a == b


@given(st.lists(records, max_size=8))
def test_stream_records_round_trip(items: list[object]) -> None:
    reader = codec.BufferedReader.over_bytes(b"".join(_encoded(r) for r in items))
    for item in items:
        got = codec.read_record(reader, LIMITS)
        assert _same(got, item)
        if isinstance(got, codec.PageRun):
            reader.read(got.count * 4096)


@given(st.lists(return_records, max_size=8))
def test_return_records_round_trip(items: list[object]) -> None:
    reader = codec.BufferedReader.over_bytes(b"".join(_encoded(r) for r in items))
    for item in items:
        assert _same(codec.read_return(reader, LIMITS), item)


def _drain(data: bytes, read: object) -> None:
    """Decode ``data`` to its end: every record must stay inside RAM."""
    ram = bytearray(PAGES * 4096)
    reader = codec.BufferedReader.over_bytes(data)
    try:
        while True:
            record = read(reader, LIMITS)  # type: ignore[operator]
            if isinstance(record, codec.PageRun | codec.ZeroRun | codec.PageRequest):
                assert record.first + record.count <= PAGES
                if isinstance(record, codec.PageRun):
                    start = record.first * 4096
                    reader.readinto(memoryview(ram)[start:start + record.count * 4096])
            if isinstance(record, codec.Discard):
                assert all(a + b <= PAGES for a, b in record.runs())
    except StreamError:
        pass
    assert len(ram) == PAGES * 4096


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_records_or_stream_errors(data: bytes) -> None:
    _drain(data, codec.read_record)
    _drain(data, codec.read_return)


@settings(max_examples=300)
@given(st.lists(records, min_size=1, max_size=5), st.data())
def test_mutated_streams_give_records_or_stream_errors(items: list[object],
                                                       data: st.DataObject) -> None:
    stream = bytearray(b"".join(_encoded(r) for r in items))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(stream) - 1))
        stream[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    _drain(bytes(stream[:cut]), codec.read_record)


@given(st.binary(max_size=200))
def test_headers_decode_or_fail_cleanly(tail: bytes) -> None:
    good = codec.Header(4096, PAGES * 4096, {"machine": "pc"}, "x").encode()
    for data in (good[:14] + tail, good + tail, tail):
        try:
            codec.read_header(codec.BufferedReader.over_bytes(data))
        except StreamError:
            pass


def test_header_round_trip_and_json_limits() -> None:
    header = codec.Header(4096, 1 << 30, {"machine": "pc", "vcpus": 1},
                          "2a8d2b5e-0000-4000-8000-000000000001")
    assert codec.read_header(codec.BufferedReader.over_bytes(header.encode())) == header
    for text in (b"[" * 100_000, b'{"a": NaN}', b'{"a": 1e999}', b"[]", b"\xff"):
        with pytest.raises(StreamError):
            codec.decode_object(text, "state")


def test_preempt_flag_and_hello() -> None:
    """postcopy-preempt: the header's flag round-trips and must be a bool;
    the preempt channel begins with its own magic, anything else is refused."""
    header = codec.Header(4096, 1 << 30, {"machine": "pc"}, preempt=True)
    assert codec.read_header(codec.BufferedReader.over_bytes(header.encode())) == header
    body = codec.encode_object({"machine": {"machine": "pc"}, "preempt": 1})
    bad = codec.HEADER.pack(codec.MAGIC, codec.VERSION, 4096, 1 << 30, len(body)) + body
    with pytest.raises(StreamError, match="postcopy-preempt flag"):
        codec.read_header(codec.BufferedReader.over_bytes(bad))
    codec.read_preempt_hello(codec.BufferedReader.over_bytes(codec.encode_preempt_hello()))
    for wrong in (codec.CHANNEL_MAGIC, codec.MAGIC, b"LVM"):
        with pytest.raises(StreamError):
            codec.read_preempt_hello(codec.BufferedReader.over_bytes(wrong))


def test_shared_ram_identity_in_the_header() -> None:
    """x-ignore-shared: the backend's (device, inode) round-trips; anything
    but two unsigned 64-bit integers is refused."""
    header = codec.Header(4096, 1 << 30, {"machine": "pc"}, shared_ram=(64768, 1234))
    assert codec.read_header(codec.BufferedReader.over_bytes(header.encode())) == header
    for wrong in ([1], [1, 2, 3], ["1", 2], [-1, 2], [1, 1 << 64], 7, {"dev": 1}, [True, 2]):
        body = codec.encode_object({"machine": {"machine": "pc"}, "shared-ram": wrong})
        bad = codec.HEADER.pack(codec.MAGIC, codec.VERSION, 4096, 1 << 30, len(body)) + body
        with pytest.raises(StreamError, match="shared-ram identity"):
            codec.read_header(codec.BufferedReader.over_bytes(bad))


def test_cpr_state_round_trip_and_checks() -> None:
    state = codec.CprState(("memory-backend:mem", "memory-backend:other"))
    assert codec.read_cpr_state(codec.BufferedReader.over_bytes(state.encode()), 2) == state
    with pytest.raises(StreamError, match="names 2 descriptors but 1 came"):
        codec.read_cpr_state(codec.BufferedReader.over_bytes(state.encode()), 1)
    twice = codec.CprState(("a", "a")).encode()
    with pytest.raises(StreamError, match="distinct names"):
        codec.read_cpr_state(codec.BufferedReader.over_bytes(twice), 2)
    assert codec.read_return(codec.BufferedReader.over_bytes(codec.CprAccepted().encode()),
                             LIMITS) == codec.CprAccepted()


@settings(max_examples=300)
@given(st.lists(st.text(min_size=1, max_size=20), max_size=4, unique=True), st.data())
def test_mutated_cpr_states_decode_or_fail_cleanly(names: list[str],
                                                   data: st.DataObject) -> None:
    message = bytearray(codec.CprState(tuple(names)).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        message[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    try:
        got = codec.read_cpr_state(codec.BufferedReader.over_bytes(bytes(message[:cut])),
                                   len(names))
    except StreamError:
        return
    assert len(got.names) == len(names)


def test_empty_discard_list_encodes() -> None:
    """Postcopy with nothing dirty at switchover (defect 12): no runs at all."""
    record = codec.Discard.from_runs(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    got = codec.read_record(codec.BufferedReader.over_bytes(record.encode()), LIMITS)
    assert isinstance(got, codec.Discard) and got.runs() == []
    assert not got.mask(PAGES).any()


_ZERO_CASE_PAGES = 64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["zero", "first-word", "last-word", "middle", "full"]),
                min_size=_ZERO_CASE_PAGES, max_size=_ZERO_CASE_PAGES),
       st.lists(st.booleans(), min_size=_ZERO_CASE_PAGES, max_size=_ZERO_CASE_PAGES))
def test_zero_page_detection_matches_a_byte_by_byte_check(kinds: list[str],
                                                          dirty: list[bool]) -> None:
    """ChunkRecords sends a dirty page as a zero run exactly when every byte
    of it is zero, whichever word holds its data (the first word is looked
    at first, the rest only when it is zero)."""
    from livemig.memory import GuestRam
    from livemig.migration.pages import ChunkRecords

    ram = GuestRam(_ZERO_CASE_PAGES * 4096)
    try:
        offsets = {"first-word": 0, "last-word": 4095, "middle": 2048}
        for page, kind in enumerate(kinds):
            if kind == "full":
                ram.fill(page * 4096, 4096, 0xA5)
            elif kind != "zero":
                ram.fill(page * 4096 + offsets[kind], 1, 0x01)
        mask = np.array(dirty, dtype=bool)
        records = ChunkRecords(ram, 0, mask)
        expected_zero = sum(1 for k, d in zip(kinds, dirty, strict=True) if d and k == "zero")
        assert records.zero == expected_zero
        assert records.normal == sum(dirty) - expected_zero
    finally:
        ram.close()
