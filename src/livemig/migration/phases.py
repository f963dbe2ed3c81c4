"""The destination's receive phases: which record may come next.

The destination is always in exactly one phase; each phase accepts a fixed
set of record types and names the phase each leads to. Any other record is
a protocol error (a StreamError with its offset), whatever its content:
a second switchover, a state record once the guest runs here, a page
before the header. The graph is drawn in docs/migration.md::

    header ─► precopy-start ─┬─(advise)─► precopy-advised ─┐
                             └──────────► precopy ─────────┤  pages, zero runs, syncs
                                                           ├─(state)─► state-loaded ─(end)─► done
                       precopy-advised ─(discard)─► discarded ─(state)─► switchover
                       switchover ─(postcopy-run)─► postcopy ─┬─ pages, zero runs
                                                              └─(end)─► done
    recovery channel: header ─► recovery ─(resume)─► postcopy
    mapped-ram file: header, pages read in place ─► mapped-ram ─ syncs ─(state)─► state-loaded

Precopy phases also accept xbzrle deltas and multifd flushes. Each multifd
channel has its own, smaller graph (CHANNEL_ACCEPTS): after its hello it
carries pages, zero runs, compressed runs and barriers, until its end::

    channel hello ─► channel ─┬─ pages, zero runs, compressed runs, syncs
                              └─(end)─► done
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import StreamError
from .codec import (
    ChannelSync,
    CompressedRun,
    DeltaRun,
    Discard,
    End,
    MultifdFlush,
    PageRun,
    PostcopyAdvise,
    PostcopyRun,
    Resume,
    State,
    StreamRecord,
    Sync,
    ZeroRun,
)


class Phase(StrEnum):
    HEADER = "header"
    PRECOPY_START = "precopy-start"
    PRECOPY = "precopy"
    PRECOPY_ADVISED = "precopy-advised"
    STATE_LOADED = "state-loaded"
    DISCARDED = "discarded"
    SWITCHOVER = "switchover"
    POSTCOPY = "postcopy"
    RECOVERY = "recovery"
    MAPPED = "mapped-ram"
    CHANNEL = "channel"
    DONE = "done"


P = Phase
_PAGES = (PageRun, ZeroRun, Sync, DeltaRun, MultifdFlush)

ACCEPTS: dict[Phase, dict[type, Phase]] = {
    P.PRECOPY_START: {**dict.fromkeys(_PAGES, P.PRECOPY), PostcopyAdvise: P.PRECOPY_ADVISED,
                      State: P.STATE_LOADED},
    P.PRECOPY: {**dict.fromkeys(_PAGES, P.PRECOPY), State: P.STATE_LOADED},
    P.PRECOPY_ADVISED: {**dict.fromkeys(_PAGES, P.PRECOPY_ADVISED), State: P.STATE_LOADED,
                        Discard: P.DISCARDED},
    P.STATE_LOADED: {End: P.DONE},
    P.DISCARDED: {State: P.SWITCHOVER},
    P.SWITCHOVER: {PostcopyRun: P.POSTCOPY},
    P.POSTCOPY: {PageRun: P.POSTCOPY, ZeroRun: P.POSTCOPY, End: P.DONE},
    P.RECOVERY: {Resume: P.POSTCOPY},
    # mapped-ram: the pages were read from their places; then syncs and the state.
    P.MAPPED: {Sync: P.MAPPED, State: P.STATE_LOADED},
}

AFTER_SWITCHOVER = frozenset({P.POSTCOPY, P.RECOVERY})

CHANNEL_ACCEPTS: dict[Phase, dict[type, Phase]] = {
    P.CHANNEL: {PageRun: P.CHANNEL, ZeroRun: P.CHANNEL, CompressedRun: P.CHANNEL,
                ChannelSync: P.CHANNEL, End: P.DONE},
}


def advance(phase: Phase, record: StreamRecord, offset: int,
            table: dict[Phase, dict[type, Phase]] = ACCEPTS) -> Phase:
    """The phase after ``record``; StreamError if ``phase`` does not accept it.
    ``table``: the main channel's graph, or CHANNEL_ACCEPTS for a multifd channel."""
    following = table.get(phase, {}).get(type(record))
    if following is None:
        raise StreamError(f"unexpected {type(record).__name__} record in phase '{phase}'",
                          offset)
    return following
