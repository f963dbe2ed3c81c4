"""A migration run as data: query-migrate sampled over time, the final
answer, and the guest's pause, saved as JSON (``livemig demo --json``) for
``livemig report`` to draw.

The file holds ``{"format": FORMAT, "scenario": …, "options": {…},
"runs": [RUN…]}``; a RUN is ``{"label", "vmm", "accel", "timeline":
[SAMPLE…], "result": <the last query-migrate>, "pause": [stop_s, resume_s]
or null, "extra": {figure: value}}`` (``extra``: a scenario's own figures,
such as a file's restore time); a SAMPLE is the seconds since ``migrate``
(``t``), the figures of the source's query-migrate listed in
:data:`FIELDS`, and where the destination was polled too, those of its
answer listed in :data:`DST_FIELDS` (postcopy's block time). Several runs
(one per VMM, say) sit side by side in one file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FORMAT = "livemig-runs/1"
# (sample key, where it is in query-migrate: top level or under "ram")
FIELDS = (("status", None), ("transferred", "ram"), ("remaining", "ram"), ("mbps", "ram"),
          ("dirty-pages-rate", "ram"), ("dirty-sync-count", "ram"),
          ("cpu-throttle-percentage", None), ("dirty-limit-throttle-time-per-round", None))
# The destination's figures a sample keeps (its query-migrate, top level).
DST_FIELDS = ("postcopy-blocktime",)


class Timeline:
    """query-migrate answers, each stamped with the seconds since ``start``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()   # QMP event timestamps are wall-clock
        self.samples: list[dict[str, Any]] = []

    def sample(self, info: dict[str, Any], dst: dict[str, Any] | None = None) -> None:
        """Keep one source answer, and ``dst``, the destination's, if polled."""
        ram = info.get("ram", {})
        entry: dict[str, Any] = {"t": self.elapsed()}
        for key, where in FIELDS:
            value = (ram if where == "ram" else info).get(key)
            if value is not None:
                entry[key] = value
        entry.setdefault("status", "none")
        for key in DST_FIELDS:
            if dst is not None and dst.get(key) is not None:
                entry[key] = dst[key]
        self.samples.append(entry)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 4)

    def since_start(self, event: dict[str, Any]) -> float:
        """A QMP event's time, in seconds since the timeline began."""
        stamp = event["timestamp"]
        return round(stamp["seconds"] + stamp["microseconds"] / 1e6 - self.started_wall, 4)


def run_record(label: str, vmm: str, accel: str, timeline: Timeline, result: dict[str, Any],
               pause: tuple[float, float] | None,
               extra: dict[str, float] | None = None) -> dict[str, Any]:
    return {"label": label, "vmm": vmm, "accel": accel, "timeline": timeline.samples,
            "result": result, "pause": list(pause) if pause is not None else None,
            "extra": extra or {}}


def write_results(path: Path, scenario: str, options: dict[str, Any],
                  runs: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"format": FORMAT, "scenario": scenario, "options": options,
                                "runs": runs}, indent=1) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    """A results file, checked enough that drawing it cannot go wrong."""
    from .vmm import LabError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LabError(f"{path}: not a readable results file: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LabError(f"{path}: not a livemig results file (format {FORMAT} expected)")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs or not all(
            isinstance(r, dict) and isinstance(r.get("timeline"), list)
            and isinstance(r.get("result"), dict) for r in runs):
        raise LabError(f"{path}: no runs with a timeline and a result")
    return data
