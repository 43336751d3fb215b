"""Summaries of a run: JSON, text tables, the chart and the docs/bench page."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from bench import report

from .adapters import BASELINE, LABELS, SHORT
from .common import SQLITE_COMMIT_EVERY, WORKLOAD_BY_NAME

# ---------------------------------------------------------------- summaries


def _value(run: dict[str, Any], engine: str, workload: str) -> float | None:
    res = run["results"].get(engine, {})
    rec = res.get("workloads", {}).get(workload, {})
    val = rec.get("value")
    return float(val) if isinstance(val, (int, float)) else None


def _status(run: dict[str, Any], engine: str, workload: str) -> str:
    """Why a figure is absent: 'missing', 'n/a', 'error', or '' if present."""
    res = run["results"].get(engine, {})
    if "missing" in res:
        return "missing"
    if "error" in res:
        return "error"
    rec = res.get("workloads", {}).get(workload, {})
    if "na" in rec:
        return "n/a"
    if "error" in rec:
        return "error"
    return "" if rec.get("value") is not None else "-"


def summary_json(run: dict[str, Any]) -> dict[str, Any]:
    """The --json document: one entry per workload; null where an engine has no figure."""
    peers = [e for e in run["engines"] if e != "strata"]
    out = []
    for wl in run["config"]["workloads"]:
        unit = WORKLOAD_BY_NAME[wl].unit

        def rounded(v: float | None, unit: str = unit) -> float | None:
            return None if v is None else round(v, 3 if unit == "ms" else 1)

        out.append({
            "name": wl,
            "unit": unit,
            "strata": rounded(_value(run, "strata", wl)) if "strata" in run["engines"] else None,
            "peers": {p: rounded(_value(run, p, wl)) for p in peers},
            # CPU ns per op of each engine's process and its children (null: no figure)
            "cpu_ns_per_op": {e: _cpu(run, e, wl) for e in run["engines"]},
        })
    return {"workloads": out}


def _cpu(run: dict[str, Any], engine: str, workload: str) -> float | None:
    """CPU ns per op (per item for scan) of the engine's process and its children."""
    rec = run["results"].get(engine, {}).get("workloads", {}).get(workload, {})
    v = rec.get("cpu_ns_per_op")
    return float(v) if isinstance(v, (int, float)) else None


def _cpu_cell(run: dict[str, Any], engine: str, wl: str) -> str:
    if WORKLOAD_BY_NAME[wl].unit != "ops/s":
        return ""
    return report.fmt_ns(_cpu(run, engine, wl)) if _cpu(run, engine, wl) is not None else "-"


def _ratio(run: dict[str, Any], workload: str, peer: str) -> float | None:
    s, p = _value(run, "strata", workload), _value(run, peer, workload)
    if s is None or p is None or p == 0:
        return None
    return s / p


def _cpu_ratio(run: dict[str, Any], workload: str, peer: str) -> float | None:
    s, p = _cpu(run, "strata", workload), _cpu(run, peer, workload)
    if s is None or p is None or p == 0:
        return None
    return s / p


def _cell_value(run: dict[str, Any], engine: str, wl: str) -> str:
    v = _value(run, engine, wl)
    if v is None:
        return _status(run, engine, wl) or "-"
    return report.fmt_rate(v) if WORKLOAD_BY_NAME[wl].unit == "ops/s" else f"{v:.1f} ms"


def summary_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    engines = run["engines"]
    peers = [e for e in engines if e != "strata"]
    headers = ["workload", "unit"]
    for e in engines:
        headers += [SHORT[e], f"{SHORT[e]} CPU/op"]
    if "strata" in engines:
        headers += [f"S/{SHORT[p]}" for p in peers]
        headers += [f"CPU/op S/{SHORT[p]}" for p in peers]
    rows = []
    for wl in run["config"]["workloads"]:
        unit = WORKLOAD_BY_NAME[wl].unit
        row = [wl, unit if unit == "ops/s" else f"{unit} (lower is better)"]
        for e in engines:
            row += [_cell_value(run, e, wl), _cpu_cell(run, e, wl)]
        if "strata" in engines:
            row += [report.fmt_ratio(_ratio(run, wl, p)) for p in peers]
            row += [report.fmt_ratio(_cpu_ratio(run, wl, p)) for p in peers]
        rows.append(row)
    return headers, rows


def detail_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows of (workload, engine) and the footnotes saying why a figure is absent."""
    headers = ["workload", "engine", "ops", "ops/s", "CPU/op", "p50", "p99", "RSS", "disk",
               "Strata/this"]
    rows = []
    notes: list[str] = []
    for wl in run["config"]["workloads"]:
        for e in run["engines"]:
            res = run["results"].get(e, {})
            rec = res.get("workloads", {}).get(wl, {})
            status = _status(run, e, wl)
            if status and status != "-":
                reason = (res.get("missing") or res.get("error") or rec.get("na")
                          or rec.get("error") or "")
                note = f"{LABELS[e]}: {status}: {reason}"
                if note not in notes:
                    notes.append(note)
                rows.append([wl, LABELS[e], "", status, "", "", "", "", "", ""])
                continue
            shown = _cell_value(run, e, wl)
            ratio = "" if e == "strata" else report.fmt_ratio(_ratio(run, wl, e))
            if rec.get("wrong_answers"):
                notes.append(f"{LABELS[e]}: {wl}: WRONG ANSWERS: {rec['wrong_answers']}")
                shown += " (!)"
            if rec.get("capped"):
                notes.append(f"{LABELS[e]}: {wl}: stopped at the time cap after {rec['ops']:,} ops")
            if rec.get("error_count"):
                notes.append(f"{LABELS[e]}: {wl}: {rec['error_count']} writer errors, "
                             f"first: {rec['errors'][0]}")
            rows.append([
                wl, LABELS[e], f"{rec.get('ops', 0):,}", shown, _cpu_cell(run, e, wl),
                report.fmt_ns(rec.get("p50_ns")), report.fmt_ns(rec.get("p99_ns")),
                report.fmt_bytes(rec.get("rss")), report.fmt_bytes(rec.get("disk")), ratio,
            ])
    return headers, rows, notes


def fsync_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Lone synced put (sync-1) p50 of each engine against raw fdatasync p50 taken just before."""
    headers = ["engine", "sync-1 p50", "fdatasync p50 (append)", "(preallocated)",
               "put / append", "put / prealloc"]
    rows = []
    for e in run["engines"]:
        res = run["results"].get(e, {})
        ref = res.get("info", {}).get("fdatasync") or {}
        put = res.get("workloads", {}).get("sync-1", {}).get("p50_ns")
        app = ref.get("append", {}).get("p50_ns")
        pre = ref.get("preallocated", {}).get("p50_ns")
        if not (put or app):
            continue
        rows.append([
            LABELS[e], report.fmt_ns(put), report.fmt_ns(app), report.fmt_ns(pre),
            report.fmt_ratio(put / app if put and app else None),
            report.fmt_ratio(put / pre if put and pre else None),
        ])
    return headers, rows


def _baseline_lines(run: dict[str, Any]) -> list[str]:
    parts = []
    for e in run["engines"]:
        rss = run["results"].get(e, {}).get("info", {}).get("rss_before_open")
        if rss:
            parts.append(f"{SHORT[e]} {report.fmt_bytes(rss)}")
    if not parts:
        return []
    return ["RSS of each worker before opening its engine (interpreter, library, key order, "
            "no database): " + ", ".join(parts)]


def _settle_times(run: dict[str, Any]) -> str:
    parts = []
    for e in run["engines"]:
        secs = run["results"].get(e, {}).get("info", {}).get("settle_seconds")
        if secs is not None:
            parts.append(f"{SHORT[e]} {secs:.2f} s")
    return f" Settling took: {', '.join(parts)}." if parts else ""


def _params_line(run: dict[str, Any]) -> str:
    c = run["config"]
    return (f"N={c['n']:,} keys (16 B keys, 100 B values), reads={c['reads']:,} per read workload, "
            f"up to {c['scan_repeats']} scans of min({c['scan_length']:,}, loaded) items, "
            f"synced points of {c['sync_seconds']:g} s; "
            f"caps: fill {c['fill_seconds']:g} s, read {c['read_seconds']:g} s"
            + f"; settle={c.get('settle', 'wait')}" + ("; --quick" if run["quick"] else ""))


def render_text(run: dict[str, Any]) -> str:
    out = [_params_line(run), ""]
    h, rows = summary_rows(run)
    out += ["Summary (ratio = Strata / peer; for ops/s above 1 means Strata is faster)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    h, rows, notes = detail_rows(run)
    out += ["Detail (latency: per op; per batch of 1000 for fillrandom-batch; per scan for scan)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2))]
    out += notes + _baseline_lines(run)
    h, rows = fsync_rows(run)
    if rows:
        out += ["", "Lone synced put vs raw 4 KiB write + fdatasync on the same disk, "
                "measured just before each engine's synced writes",
                report.text_table(h, rows)]
    out += ["", f"wall time {run['wall_seconds']} s"]
    return "\n".join(out)


def write_docs(run: dict[str, Any], docs_dir: Path) -> None:
    report.write_page(docs_dir, "engine", run, draw_chart, render_markdown, run)


def draw_chart(run: dict[str, Any], path: Path) -> None:
    wls = [w for w in run["config"]["workloads"] if WORKLOAD_BY_NAME[w].unit == "ops/s"]
    engines = [e for e in run["engines"] if "missing" not in run["results"].get(e, {})]
    base_ok = BASELINE in engines and all(_value(run, BASELINE, w) for w in wls)
    series: dict[str, list[float | None]] = {}
    for e in engines:
        vals = []
        for w in wls:
            v = _value(run, e, w)
            if v is not None and base_ok:
                v = v / (_value(run, BASELINE, w) or 1)
            vals.append(v)
        series[LABELS[e]] = vals
    c = run["config"]
    title = f"Strata engine vs peers, N={c['n']:,} (16 B keys, 100 B values)"
    if base_ok:
        report.bar_chart(path, wls, series, title=title, ylabel="ops/s relative to LevelDB (log)",
                         reference_line=1.0)
    else:
        report.bar_chart(path, wls, series, title=title, ylabel="ops/s (log)")


PAGE = Path(__file__).with_name("page.md")  # the report's prose, with ${placeholders}

SETTLE_FULL = (
    "Before closing, every engine compacted its whole key range (`--settle full`: Strata "
    "`compact_all()`, LevelDB and RocksDB `compact_range()`; sqlite3 has nothing to compact).")
SETTLE_WAIT = (
    "Before closing, each engine finishes the flushes and compactions its fill scheduled, so "
    "the reads do not compete with them: Strata `wait_for_compactions()`; LevelDB and RocksDB "
    "until their background threads go idle (process CPU under 10 % for 1 s while the caller "
    "sleeps; RocksDB also until its compaction-pending and running-job properties read 0). "
    "`--settle full` compacts the whole key range on every engine instead.")


def render_markdown(run: dict[str, Any], has_chart: bool) -> str:
    """docs/bench/engine.md: the prose of `page.md` filled with this run's figures."""
    m, c = run["machine"], run["config"]
    summary_h, summary = summary_rows(run)
    detail_h, detail, notes = detail_rows(run)
    extra = notes + _baseline_lines(run)
    fsync_h, fsync = fsync_rows(run)
    missing = {e: r.get("missing") or r.get("error") for e, r in run["results"].items()
               if r.get("missing") or r.get("error")}
    fields = {
        "quick": " --quick" if run["quick"] else "",
        "date": m["date"], "revision": m["strata_revision"], "wall_seconds": run["wall_seconds"],
        "params": _params_line(run),
        "summary_table": report.markdown_table(summary_h, summary,
                                               "ll" + "r" * (len(summary_h) - 2)) + "\n\n",
        "chart": "![ops/s relative to LevelDB](engine.png)\n\n" if has_chart else "",
        "detail_table": report.markdown_table(detail_h, detail,
                                              "ll" + "r" * (len(detail_h) - 2)) + "\n\n",
        "detail_notes": "".join(f"- {x}\n" for x in extra) + "\n" if extra else "",
        "fsync": (
            "## Synced writes against the disk\n\nA lone synced put (`sync-1` p50) against a "
            "raw 4 KiB `pwrite` + `fdatasync` on the same disk, measured in each engine's worker "
            "just before its synced writes (so load from elsewhere shifts both alike): "
            "appending to a new file, and overwriting space preallocated with "
            "`posix_fallocate` (no file-size change to journal).\n\n"
            + report.markdown_table(fsync_h, fsync) + "\n\n") if fsync else "",
        "workloads": "\n".join(f"- `{wl}`: {WORKLOAD_BY_NAME[wl].about}."
                               for wl in c["workloads"]),
        "data_dir_fs": m["data_dir_fs"],
        "settle": (SETTLE_FULL if c.get("settle") == "full" else SETTLE_WAIT)
        + _settle_times(run),
        "sqlite_commit_every": SQLITE_COMMIT_EVERY,
        "cpu_model": m["cpu_model"], "cpu_count": m["cpu_count"], "cpus_usable": m["cpus_usable"],
        "memory": report.fmt_bytes(m["memory"]), "platform": m["platform"], "python": m["python"],
        "load_start": m.get("loadavg_start"), "load_end": m.get("loadavg_end"),
        "sqlite": m["sqlite"],
        "libraries": ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "missing": ("\n## Engines without figures\n\n" + "\n".join(
            f"- {LABELS[e]}: {why}" for e, why in missing.items())) if missing else "",
    }
    return string.Template(PAGE.read_text(encoding="utf-8")).substitute(fields).rstrip() + "\n"
