"""Time stamps along a postcopy page request, for measuring the fault path.

``LIVEMIG_TRACE_FAULTS=FILE`` in a livemig process's environment records,
for each page request, when each step happened (CLOCK_MONOTONIC, which both
processes of a same-host migration share), and writes them to FILE as JSON
lines when the postcopy side ends. The steps, by the first page of the run:

- destination ``fault``: the fault service read the fault message;
- destination ``request``: the request went out on the return path;
- source ``request-read``: the return-path reader decoded it;
- source ``sent``: the pages went out (main or preempt channel);
- destination ``received``: a receiving thread decoded the run's record;
- destination ``read``: the run's pages are in the staging buffer;
- destination ``placed``: UFFDIO_COPY (or ZEROPAGE) returned.

``benchmarks/bench_fault_path.py`` joins the two files. Without the
variable, :func:`mark` is one truth test.
"""

from __future__ import annotations

import json
import os
import threading
import time

ENV = "LIVEMIG_TRACE_FAULTS"

_path = os.environ.get(ENV) or None
_lock = threading.Lock()
_marks: list[tuple[str, int, int]] = []
enabled = _path is not None


def mark(step: str, page: int) -> None:
    """Record ``step`` for the run that begins at ``page`` (if tracing)."""
    if enabled:
        _marks.append((step, page, time.monotonic_ns()))  # list.append: atomic


def flush() -> None:
    """Append what was recorded to the trace file and start afresh."""
    if not enabled or _path is None:
        return
    with _lock:
        count = len(_marks)
        marks = _marks[:count]
        del _marks[:count]  # marks appended meanwhile stay for the next flush
        with open(_path, "a") as out:
            for step, page, ns in marks:
                out.write(json.dumps({"step": step, "page": page, "ns": ns}) + "\n")
