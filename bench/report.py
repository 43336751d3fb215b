"""Shared pieces of the benchmarks: measuring, formatting, machine facts, charts.

Nothing here knows about a particular workload. `bench/engine/` and
`bench/server/` measure, then hand plain dicts and lists to these helpers to
print tables, write the Markdown page under `docs/bench/` and draw the PNG.

Contract: pure functions, no global state; matplotlib is imported lazily (and
with the Agg backend) only by `bar_chart`, so a run that writes no chart never
pays for it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

# ---------------------------------------------------------------- measuring


def percentiles(samples: Iterable[int], points: Sequence[float] = (50.0, 99.0)) -> list[int | None]:
    """Nearest-rank percentiles of integer samples (ns); None for no samples.

    Nearest rank rather than interpolation: every figure reported is a latency
    that was actually observed.
    """
    ordered = sorted(samples)
    if not ordered:
        return [None for _ in points]
    n = len(ordered)
    out: list[int | None] = []
    for p in points:
        rank = max(1, -(-int(p * n) // 100))  # ceil(p * n / 100), at least 1
        out.append(ordered[min(rank, n) - 1])
    return out


def new_latency_buffer(n: int) -> array:
    """A zeroed signed 64-bit array of n slots: 8 bytes a sample, no per-item objects."""
    return array("q", bytes(8 * n))


def disk_usage(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(allocated, apparent) bytes of the files under path.

    allocated is what `du` counts (st_blocks * 512): preallocated-but-unwritten
    space counts, it is taken from the disk. apparent is the sum of file sizes
    (`du --apparent-size`). Hard links are counted once.
    """
    allocated = apparent = 0
    seen: set[tuple[int, int]] = set()
    stack = [os.fspath(path)]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # a file removed by a background compaction meanwhile
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                continue
            seen.add(ident)
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def process_rss(include_children: bool = True) -> int:
    """Resident set size of this process, plus its live children's (bytes).

    Children count because an engine may do its compactions in helper
    processes; leaving them out would flatter it.
    """
    import psutil

    proc = psutil.Process()
    rss = proc.memory_info().rss
    if include_children:
        for child in proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
    return rss


# ---------------------------------------------------------------- formatting


def fmt_rate(x: float | None) -> str:
    """182345.2 -> '182.3k'; None -> '-'."""
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 1e3:
        return f"{x / 1e3:.2f}k"
    return f"{x:.1f}"


def fmt_ns(ns: float | None) -> str:
    """A duration in ns as '812 ns', '8.1 µs', '1.23 ms' or '2.50 s'; None -> '-'."""
    if ns is None:
        return "-"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e5:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e6:
        return f"{ns / 1e3:.0f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 10:
        return f"{x:.0f}x"
    if x >= 1:
        return f"{x:.2f}x"
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A plain aligned table for a terminal.

    align: one 'l' or 'r' per column; by default the first column left, the rest right.
    """
    cols = len(headers)
    if not align:
        align = "l" + "r" * (cols - 1)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            parts.append(cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    cols = len(headers)
    if not align:
        align = "l" + "r" * (cols - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)
    return "\n".join(out)


# ---------------------------------------------------------------- machine facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mount_of(path: str) -> str:
    """'ext4 on /dev/vda (mounted at /)' for the file system holding path, best effort."""
    path = os.path.realpath(path)
    best = ("", "", "")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[1]):
                    best = (dev, mnt, fstype)
    except OSError:
        return "unknown"
    if not best[1]:
        return "unknown"
    return f"{best[2]} on {best[0]} (mounted at {best[1]})"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        rev = out.stdout.strip()
        if not rev:
            return "uncommitted"
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(data_dir: str, packages: Sequence[str] = ()) -> dict[str, object]:
    """Facts that make the figures interpretable: CPU, memory, disk, versions."""
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except ImportError:
        mem = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": _cpu_model(),
        "memory": mem,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "data_dir_fs": _mount_of(data_dir),
        "versions": {name: package_version(name) for name in packages},
    }


# ---------------------------------------------------------------- charts


def bar_chart(
    path: str | os.PathLike[str],
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    log: bool = True,
    reference_line: float | None = None,
) -> None:
    """Grouped bars: one group per entry of groups, one bar per series.

    A None value leaves a gap (engine missing or workload not applicable).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(series)
    count = max(1, len(names))
    width = 0.8 / count
    fig_w = max(8.0, 1.1 * len(groups) + 2)
    fig, ax = plt.subplots(figsize=(fig_w, 4.8), dpi=110)
    for i, name in enumerate(names):
        xs, ys = [], []
        for g, value in enumerate(series[name]):
            if value is not None and value > 0:
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(value)
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=25, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    if reference_line is not None:
        ax.axhline(reference_line, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, ncol=min(count, 5), loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_page(docs_dir: Path, stem: str, run: dict, draw_chart, render_markdown,
               raw: dict) -> None:
    """Write docs_dir/<stem>.md (rendered with or without the chart), <stem>.png and
    <stem>.json (`raw`). A chart that cannot be drawn is reported, not fatal: the table
    is the record."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    try:
        draw_chart(run, docs_dir / f"{stem}.png")
        has_chart = True
    except Exception as exc:  # noqa: BLE001 - any plotting failure
        print(f"chart not drawn: {exc!r}", file=sys.stderr)
        has_chart = False
    (docs_dir / f"{stem}.md").write_text(render_markdown(run, has_chart), encoding="utf-8")
    (docs_dir / f"{stem}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n",
                                           encoding="utf-8")


def publish(run: dict, args, name: str, summary_json, render_text, write_docs,
            verbose: bool) -> None:
    """Print a run (JSON with --json, else the text table) and write docs/bench/<name>.*

    Docs are written by a full run, or wherever --docs points; --quick,
    --json and --no-docs write none unless --docs is given.
    """
    if args.json:
        print(json.dumps(summary_json(run)))
    else:
        print(render_text(run))
    docs_dir = args.docs
    if docs_dir is None and not (args.quick or args.json or args.no_docs):
        docs_dir = str(Path(os.path.abspath(__file__)).parent.parent / "docs" / "bench")
    if docs_dir and not args.no_docs:
        write_docs(run, Path(docs_dir))
        if verbose:
            print(f"wrote {docs_dir}/{name}.md, {name}.png, {name}.json", file=sys.stderr)
