"""``livemig report RESULTS.json --png FILE``: a migration run drawn.

One column per VMM, side by side (its median run, when a file holds
several): remaining RAM and throughput over time, each dirty-sync pass
marked, the guest's pause shaded, status changes named, and in postcopy
the destination's block time as it grows; under each, the run's headline
figures. matplotlib, with its
non-interactive Agg backend (no display needed), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MiB = 1 << 20
COLUMN_INCHES = 7.0
HEIGHT_INCHES = 7.0
DPI = 100   # 1 run: 1400 x 700 pixels; the issue asks for at least 1000 x 600


# A scenario's own figures (lab/bench.py's run records): key, name, unit, scale.
EXTRA_ROWS = (("blocktime-ms", "postcopy block time (dst)", "ms", 1),
              ("paused-ms", "paused by the cut", "ms", 1),
              ("restore-ms", "restore", "ms", 1),
              ("file-bytes", "file size", "MiB", MiB))


def _headlines(run: dict[str, Any]) -> list[tuple[str, str]]:
    result = run["result"]
    ram = result.get("ram", {})
    rows = [("status", str(result.get("status", "?"))),
            ("total time", f"{result.get('total-time', 0)} ms"),
            ("downtime", f"{result.get('downtime', 0)} ms"),
            ("transferred", f"{ram.get('transferred', 0) / MiB:.1f} MiB"),
            ("passes", str(ram.get("dirty-sync-count", 0)))]
    if run.get("pause"):
        stop, resume = run["pause"]
        rows.append(("guest pause (STOP to RESUME)", f"{(resume - stop) * 1000:.1f} ms"))
    if ram.get("postcopy-requests"):
        rows.append(("postcopy requests", str(ram["postcopy-requests"])))
    extra = run.get("extra", {})
    for key, name, unit, scale in EXTRA_ROWS:
        if key in extra:
            rows.append((name, f"{extra[key] / scale:,.1f} {unit}"))
    return rows


def _blocked(run: dict[str, Any]) -> list[tuple[float, float]]:
    """(seconds, the destination's postcopy block time in ms) samples."""
    return [(s["t"], s["postcopy-blocktime"]) for s in run["timeline"]
            if "postcopy-blocktime" in s]


def _draw_block_time(ax: Any, run: dict[str, Any], main: Any) -> None:
    """Postcopy: the destination's block time as it grows, under the main plot."""
    blocked = _blocked(run)
    if blocked:
        ax.step([b[0] for b in blocked], [b[1] for b in blocked], where="post",
                color="tab:purple", marker=".")   # a VMM may report it once, at the end
    else:
        ax.text(0.5, 0.5, "no postcopy block time", transform=ax.transAxes, ha="center",
                va="center", color="grey")
    ax.sharex(main)
    ax.set_ylabel("block time, dst (ms)", color="tab:purple")
    ax.set_xlabel("seconds since migrate")
    ax.grid(alpha=0.3)


def _options_title(results: dict[str, Any]) -> str:
    """The run's settings, short: a workload guest by its knobs, wrapped."""
    import textwrap

    parts = []
    for key, value in results.get("options", {}).items():
        if isinstance(value, dict) and "dirty" in value:
            d = value["dirty"]
            value = (f"dirty {d.get('wss_mib')} MiB {d.get('pattern')} "
                     f"{d.get('rate') or 'max'} MiB/s")
        elif isinstance(value, (dict, list, tuple)) and not value:
            continue
        parts.append(f"{key}={value}")
    return textwrap.fill(f"livemig {results.get('scenario', 'run')}: " + ", ".join(parts), 150)


def _draw_run(ax: Any, table_ax: Any, run: dict[str, Any]) -> None:
    samples = run["timeline"]
    t = [s["t"] for s in samples]
    remaining = [s.get("remaining", 0) / MiB for s in samples]
    mbps = [s.get("mbps", 0) for s in samples]
    ax.plot(t, remaining, color="tab:blue", label="remaining RAM (MiB)")
    ax.set_xlabel("seconds since migrate")
    ax.set_ylabel("remaining RAM (MiB)", color="tab:blue")
    ax.grid(alpha=0.3)
    rate = ax.twinx()
    rate.plot(t, mbps, color="tab:orange", label="throughput (Mb/s)")
    rate.set_ylabel("throughput (Mb/s)", color="tab:orange")
    passes = 0
    for sample in samples:
        count = sample.get("dirty-sync-count", 0)
        if count > passes:
            passes = count
            ax.axvline(sample["t"], color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"pass {count}", (sample["t"], 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=8, color="grey")
    status = None
    for sample in samples:
        if sample.get("status") != status:
            status = sample.get("status")
            ax.annotate(str(status), (sample["t"], 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, va="bottom", ha="left", fontsize=8, color="tab:green")
    if run.get("pause"):
        stop, resume = run["pause"]
        ax.axvspan(stop, max(resume, stop + 1e-3), color="tab:red", alpha=0.3,
                   label="guest paused")
    ax.set_title(f"{run.get('label', run.get('vmm', '?'))} ({run.get('accel', '?')})")
    handles = ax.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    table_ax.axis("off")
    table = table_ax.table(cellText=[[k, v] for k, v in _headlines(run)], loc="center",
                           colWidths=[0.55, 0.35])
    table.auto_set_font_size(False)
    table.set_fontsize(9)


def per_vmm(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per VMM (label), in the order they first appear: its median
    run by total-time (``livemig bench`` keeps several of each)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(str(run.get("label", run.get("vmm", "?"))), []).append(run)
    chosen = []
    for group in groups.values():
        ordered = sorted(group, key=lambda r: r["result"].get("total-time", 0))
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def draw(results: dict[str, Any], png: Path) -> None:
    """Write ``results`` (lab/timeline.py's format) as a PNG: a column per
    VMM, each its median run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = per_vmm(results["runs"])
    width = COLUMN_INCHES * max(len(runs), 2)   # one run gets two columns' width
    postcopy = any(_blocked(run) for run in runs)
    ratios = [3, 1.2, 1] if postcopy else [3, 1]
    figure, axes = plt.subplots(len(ratios), len(runs), squeeze=False,
                                figsize=(width, HEIGHT_INCHES + (2 if postcopy else 0)),
                                gridspec_kw={"height_ratios": ratios})
    for column, run in enumerate(runs):
        _draw_run(axes[0][column], axes[-1][column], run)
        if postcopy:
            _draw_block_time(axes[1][column], run, axes[0][column])
    figure.suptitle(_options_title(results), fontsize=10)
    figure.tight_layout()
    figure.savefig(png, dpi=DPI)
    plt.close(figure)
