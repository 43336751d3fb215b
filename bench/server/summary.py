"""Summaries of a run: JSON, text tables, the chart and the docs/bench page."""

from __future__ import annotations

import string
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import report

from .common import LABELS, PEERS, SHORT, Workload
from .runner import pct

# ---------------------------------------------------------------- summaries


def _rec(run: dict[str, Any], system: str, name: str) -> dict[str, Any]:
    return run["results"].get(system, {}).get(name, {}) or {}


def _value(run: dict[str, Any], system: str, name: str) -> float | None:
    val = _rec(run, system, name).get("value")
    return float(val) if isinstance(val, (int, float)) and val > 0 else None


def _peer_value(run: dict[str, Any], w: Workload, peer: str) -> float | None:
    if w.peer_source is None or peer not in run["systems"]:
        return None
    return _value(run, peer, w.peer_source)


def _ratio(run: dict[str, Any], w: Workload, peer: str) -> float | None:
    s, p = _value(run, "strata", w.name), _peer_value(run, w, peer)
    if s is None or p is None:
        return None
    return s / p


def summary_json(run: dict[str, Any]) -> dict[str, Any]:
    out = []
    for w in run["workloads"]:
        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        out.append({
            "name": w.name, "unit": w.unit,
            "strata": (rounded(_value(run, "strata", w.name))
                       if "strata" in run["systems"] else None),
            "peers": {p: rounded(_peer_value(run, w, p)) for p in PEERS},
        })
    return {"workloads": out}


def _status(run: dict[str, Any], system: str, w: Workload) -> str:
    if system not in run["systems"]:
        return ""
    svc = run["services"].get(system, {})
    if svc.get("missing"):
        return "missing"
    name = w.name if system == "strata" else w.peer_source
    if name is None:
        return "n/a"
    rec = _rec(run, system, name)
    if rec.get("error") or (not rec and run["results"].get(system, {}).get("error")):
        return "error"
    return "" if rec else "-"


def _cell(run: dict[str, Any], system: str, w: Workload) -> str:
    v = _value(run, system, w.name) if system == "strata" else _peer_value(run, w, system)
    if v is None:
        return _status(run, system, w) or "-"
    return report.fmt_rate(v) if w.unit == "ops/s" else f"{v:.0f}"


def summary_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    systems = run["systems"]
    peers = [p for p in PEERS if p in systems]
    headers = ["workload", "unit"] + [SHORT[s] for s in systems]
    if "strata" in systems:
        headers += [f"S/{SHORT[p]}" for p in peers]
    rows = []
    for w in run["workloads"]:
        row = [w.name, "ops/s" if w.unit == "ops/s" else "ms (lower is better)"]
        row += [_cell(run, s, w) for s in systems]
        if "strata" in systems:
            row += [report.fmt_ratio(_ratio(run, w, p)) for p in peers]
        rows.append(row)
    return headers, rows


def _us(v: float | None) -> str:
    return "" if v is None else f"{v:.1f} µs"


def detail_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows of (workload, system) with ops/s, p50, p99, CPU; and footnotes."""
    headers = ["workload", "system", "requests", "ops/s", "p50", "p99", "server CPU",
               "server CPU/op", "clients CPU", "Strata/this"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for w in run["workloads"]:
        if w.unit != "ops/s":
            continue
        for s in run["systems"]:
            name = w.name if s == "strata" else w.peer_source
            if name is None or (s != "strata" and w.family == "asyncio"):
                continue  # Strata-only workload; peers' figures are in the plain rows
            rec = _rec(run, s, name)
            status = _status(run, s, w)
            if status:
                why = (run["services"].get(s, {}).get("missing") or rec.get("error")
                       or run["results"].get(s, {}).get("error") or "")
                note = f"{LABELS[s]}: {w.name}: {status}: {why}"
                if why and note not in notes:
                    notes.append(note)
                rows.append([w.name, LABELS[s], "", status, "", "", "", "", "", ""])
                continue
            shown = report.fmt_rate(rec.get("value"))
            if rec.get("wrong_answers"):
                shown += " (!)"
                notes.append(f"{LABELS[s]}: {w.name}: WRONG ANSWERS: {rec['wrong_answers']}")
            if rec.get("errors"):
                notes.append(f"{LABELS[s]}: {w.name}: {rec['errors']} failed requests, first: "
                             f"{rec.get('first_error')}")
            if rec.get("capped_by_count"):
                notes.append(f"{LABELS[s]}: {w.name}: stopped at the request cap "
                             f"({rec['requests']:,}) before the time cap")
            ratio = "" if s == "strata" else report.fmt_ratio(_ratio(run, w, s))
            rows.append([w.name, LABELS[s], f"{rec.get('requests', 0):,}", shown,
                         report.fmt_ns(rec.get("p50_ns")), report.fmt_ns(rec.get("p99_ns")),
                         pct(rec.get("server_cpu")), _us(rec.get("server_cpu_us_per_op")),
                         pct(rec.get("client_cpu")), ratio])
    return headers, rows, notes


def engine_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Strata's group commit during each write point, from the daemon's /metrics."""
    headers = ["workload", "fsyncs/s", "WAL frames per fsync", "flushes", "compactions",
               "write stall"]
    rows = []
    for w in run["workloads"]:
        eng = _rec(run, "strata", w.name).get("engine")
        if not eng or not eng.get("wal_groups"):
            continue
        fpf = eng.get("frames_per_fsync")
        rows.append([w.name, f"{eng['fsyncs_per_s']:.0f}", "-" if fpf is None else f"{fpf:.1f}",
                     f"{eng.get('flushes', 0):.0f}", f"{eng.get('compactions', 0):.0f}",
                     f"{eng.get('write_stall_seconds', 0):.2f} s"])
    return headers, rows


def lifecycle_lines(run: dict[str, Any]) -> list[str]:
    """The daemon's own view of start, stop and restart, next to the measured figures."""
    if "strata" not in run["systems"]:
        return []
    res = run["results"].get("strata", {})
    out = []
    st, ex, rs = (res.get(k, {}) for k in ("startup", "sigterm-exit", "restart"))
    if st.get("value"):
        out.append(f"Strata startup to SERVING (empty data dir): {st['value']:.0f} ms measured "
                   f"from process start (the daemon logs `serving in "
                   f"{st.get('serving_in_ms', '?')} ms` from its own start; the rest is the "
                   "interpreter and imports)")
    if ex.get("value"):
        out.append(f"Strata SIGTERM to exit after the load: {ex['value']:.0f} ms (the daemon logs "
                   f"`stopped cleanly in {ex.get('stopped_in_ms', '?')} ms`)")
    if rs.get("value"):
        verdict = "OK" if rs.get("replay_ok") else "NOT OK"
        out.append(f"Strata restart after SIGTERM: {rs['value']:.0f} ms to SERVING; replay check "
                   f"{verdict}: `{rs.get('opened_line')}`")
    if res.get("asyncio_startup_ms") is not None:
        out.append(f"Strata on the asyncio loop: startup {res['asyncio_startup_ms']:.0f} ms, "
                   f"SIGTERM to exit {res.get('asyncio_sigterm_ms', 0):.0f} ms")
    rss = [f"{LABELS[s]} {report.fmt_bytes(run['results'][s].get('rss_after_load'))}"
           for s in run["systems"] if run["results"].get(s, {}).get("rss_after_load")]
    if rss:
        out.append("Server RSS after the last load point: " + ", ".join(rss))
    for s in run["systems"]:
        probs = run["results"].get(s, {}).get("log", {}).get("log_problems")
        if probs:
            out.append(f"{LABELS[s]} log warnings/errors: " + "; ".join(probs[:5]))
    return out


def _params_line(run: dict[str, Any]) -> str:
    c = run["config"]
    return (f"points of {c['seconds']:g} s (at most {c['max_requests']:,} requests), in flight "
            f"{', '.join(str(x) for x in c['inflight'])} over up to {c['processes']} client "
            f"processes; 16 B keys, 100 B values; batches of {c['batch_ops']} puts; read set "
            f"{c['read_keys']:,} keys" + ("; --quick" if run["quick"] else ""))


def render_text(run: dict[str, Any]) -> str:
    out = [_params_line(run), ""]
    h, rows = summary_rows(run)
    out += ["Summary (ratio = Strata / peer; for ops/s above 1 means Strata is faster)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    h, rows, notes = detail_rows(run)
    out += ["Detail (latency per request: one put or get, or one message of "
            f"{run['config']['batch_ops']} puts for batch/write; CPU 100 % = one core)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2))]
    out += notes
    h, rows = engine_rows(run)
    if rows:
        out += ["", "Strata group commit per point (daemon /metrics; a put, a Batch request "
                "and a Write message are one WAL frame each)", report.text_table(h, rows)]
    out += [""] + lifecycle_lines(run)
    missing = [f"{LABELS[s]}: {v['missing']}" for s, v in run["services"].items()
               if v.get("missing")]
    if missing:
        out += ["", "Not run: " + "; ".join(missing)]
    out += ["", f"wall time {run['wall_seconds']} s"]
    return "\n".join(out)


def draw_chart(run: dict[str, Any], path: Path) -> None:
    """One group per (put|get, in flight); a bar per server, and Strata's variants beside it."""
    c, b = run["config"], run["config"]["batch_ops"]
    groups = [(kind, n) for kind in ("put", "get") for n in c["inflight"]]
    systems = [s for s in run["systems"] if not run["services"].get(s, {}).get("missing")]
    series: dict[str, list[float | None]] = {}

    def add(label: str, values: list[float | None]) -> None:
        if any(v is not None for v in values):
            series[label] = values

    if "strata" in systems:
        add("Strata", [_value(run, "strata", f"{k}-c{n}") for k, n in groups])
        add("Strata, asyncio loop", [_value(run, "strata", f"{k}-c{n}-asyncio") for k, n in groups])
        add(f"Strata Batch x{b} (puts/s)",
            [_value(run, "strata", f"batch{b}-c{n}") if k == "put" else None for k, n in groups])
        add(f"Strata Write stream x{b} (puts/s)",
            [_value(run, "strata", f"write{b}-c{n}") if k == "put" else None for k, n in groups])
    for s in systems:
        if s != "strata":
            add(LABELS[s], [_value(run, s, f"{k}-c{n}") for k, n in groups])
    report.bar_chart(path, [f"{k} c{n}" for k, n in groups], series,
                     title="Strata daemon vs etcd and Redis, loopback, by requests in flight\n"
                           "(puts durable except Redis everysec)",
                     ylabel="ops/s (log)")


PAGE = Path(__file__).with_name("page.md")  # the report's prose, with ${placeholders}


def render_markdown(run: dict[str, Any], has_chart: bool) -> str:
    """docs/bench/server.md: the prose of `page.md` filled with this run's figures."""
    m, c = run["machine"], run["config"]
    summary_h, summary = summary_rows(run)
    detail_h, detail, notes = detail_rows(run)
    group_h, group = engine_rows(run)
    lc = lifecycle_lines(run)
    missing = {s: v["missing"] for s, v in run["services"].items() if v.get("missing")}

    def section(title: str, body: str) -> str:
        return f"## {title}\n\n{body}\n\n"

    fields = {
        "quick": " --quick" if run["quick"] else "",
        "date": m["date"], "revision": m["strata_revision"], "wall_seconds": run["wall_seconds"],
        "params": _params_line(run),
        "summary_table": report.markdown_table(summary_h, summary,
                                               "ll" + "r" * (len(summary_h) - 2)) + "\n\n",
        "chart": "![ops/s per workload and server](server.png)\n\n" if has_chart else "",
        "batch_ops": c["batch_ops"], "cores": m["cpus_usable"] or m["cpu_count"],
        "detail_table": report.markdown_table(detail_h, detail,
                                              "ll" + "r" * (len(detail_h) - 2)) + "\n\n",
        "detail_notes": "".join(f"- {x}\n" for x in notes) + "\n" if notes else "",
        "group_commit": section(
            "Strata group commit",
            "What the engine did during each write point, from the daemon's `/metrics` "
            "(`strata_engine_wal_groups_total`, `..._wal_group_frames_total`, flushes, "
            "compactions, write stalls) read before and after the point. One fsync per group; "
            "a put, a Batch request and a Write-stream message are one WAL frame each, so "
            "frames per fsync is how many acknowledged requests shared a sync.\n\n"
            + report.markdown_table(group_h, group)) if group else "",
        "lifecycle": section("Start, stop, restart", "\n".join(f"- {x}" for x in lc))
        if lc else "",
        "workloads": "\n".join(f"- `{w.name}`: {w.about}." for w in run["workloads"]),
        "data_dir_fs": m["data_dir_fs"], "processes": c["processes"],
        "seconds": f"{c['seconds']:g}", "max_requests": f"{c['max_requests']:,}",
        "read_keys": f"{c['read_keys']:,}",
        "cpu_model": m["cpu_model"], "cpu_count": m["cpu_count"], "cpus_usable": m["cpus_usable"],
        "memory": report.fmt_bytes(m["memory"]), "platform": m["platform"], "python": m["python"],
        "load_start": m.get("loadavg_start"), "load_end": m.get("loadavg_end"),
        "servers": ", ".join(f"{LABELS[s]} {v.get('version') or '?'}"
                             for s, v in run["services"].items() if not v.get("missing")),
        "libraries": ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "missing": "\n" + section("Servers without figures", "\n".join(
            f"- {LABELS[s]}: {why}" for s, why in missing.items())).rstrip() if missing else "",
    }
    return string.Template(PAGE.read_text(encoding="utf-8")).substitute(fields).rstrip() + "\n"


def write_docs(run: dict[str, Any], docs_dir: Path) -> None:
    raw = dict(run)
    raw["workloads"] = [asdict(w) for w in run["workloads"]]
    report.write_page(docs_dir, "server", run, draw_chart, render_markdown, raw)
