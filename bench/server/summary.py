"""Summaries of a run: JSON, text tables, the chart and the docs/bench page."""

from __future__ import annotations

import json
import sys
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


def detail_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows of (workload, system) with ops/s, p50, p99, CPU; and footnotes."""
    headers = ["workload", "system", "requests", "ops/s", "p50", "p99", "server CPU",
               "clients CPU", "Strata/this"]
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
                rows.append([w.name, LABELS[s], "", status, "", "", "", "", ""])
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
                         pct(rec.get("server_cpu")), pct(rec.get("client_cpu")), ratio])
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


def render_markdown(run: dict[str, Any], has_chart: bool) -> str:
    m, c = run["machine"], run["config"]
    lines = [
        "# Server benchmark: Strata daemon vs etcd and Redis",
        "",
        f"Generated by `python -m bench server{' --quick' if run['quick'] else ''}` on "
        f"{m['date']} (Strata revision {m['strata_revision']}); the run took "
        f"{run['wall_seconds']} s. Every server ran the same load shape in the same run; ratios "
        "are Strata / peer. The machine has two cores shared by the server and its clients, so "
        "absolute figures are low and noisy; the ratios and the CPU columns say more.",
        "",
        _params_line(run) + ".",
        "",
        "## Summary",
        "",
        "ops/s: acknowledged requests per second; for `batch*` and `write*`, puts (keys) per "
        "second. `startup`, `sigterm-exit` and `restart` in ms, lower is better. For ops/s a "
        "ratio above 1 means Strata is faster. `*-asyncio` rows are the Strata daemon on the "
        "stock asyncio event loop, compared with the same peers' figures as the plain row. "
        "`n/a`: Strata-only workload; `missing`: the peer is not installed.",
        "",
    ]
    h, rows = summary_rows(run)
    lines += [report.markdown_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    if has_chart:
        lines += ["![ops/s per workload and server](server.png)", ""]
    lines += ["## Detail", "",
              "Latency percentiles are nearest-rank over every request of the point, measured in "
              "the client from send to answer (one put or get; one Batch request or Write-stream "
              f"message of {c['batch_ops']} puts). CPU is process CPU time over the point's "
              "wall time, 100 % = one core; `clients CPU` adds up all client processes.", "",
              "Reading the CPU columns: server, clients and anything else on the machine share "
              f"its {m['cpus_usable'] or m['cpu_count']} cores. A Python server whose event loop "
              "is saturated shows about 100 % (one core: the loop and the GIL); when the clients "
              "add up to most of the cores, the Python clients, not the server, set the figure, "
              "and the peer's real capacity is higher than shown.", ""]
    h, rows, notes = detail_rows(run)
    lines += [report.markdown_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    if notes:
        lines += [f"- {x}" for x in notes] + [""]
    h, rows = engine_rows(run)
    if rows:
        lines += ["## Strata group commit", "",
                  "What the engine did during each write point, from the daemon's `/metrics` "
                  "(`strata_engine_wal_groups_total`, `..._wal_group_frames_total`, flushes, "
                  "compactions, write stalls) read before and after the point. One fsync per "
                  "group; a put, a Batch request and a Write-stream message are one WAL frame "
                  "each, so frames per fsync is how many acknowledged requests shared a sync.",
                  "", report.markdown_table(h, rows), ""]
    lc = lifecycle_lines(run)
    if lc:
        lines += ["## Start, stop, restart", ""] + [f"- {x}" for x in lc] + [""]
    lines += ["## Workloads", ""]
    for w in run["workloads"]:
        lines.append(f"- `{w.name}`: {w.about}.")
    lines += ["", "## Method", ""]
    lines += [
        "- Servers: started by the bench one after another, each on free loopback ports with a "
        f"fresh data directory on the measured disk ({m['data_dir_fs']}), stopped with SIGTERM.",
        "  - Strata: `python -m strata.server.cli serve --data-dir D --grpc-listen 127.0.0.1:P "
        "--ws-listen ... --metrics-listen ...` with `STRATA_DURABILITY=always` (acknowledged "
        "after the group's fsync) and `STRATA_EVENT_LOOP=uvloop` (the default); the `*-asyncio` "
        "rows start a second daemon with `STRATA_EVENT_LOOP=asyncio`. Ready = the gRPC health "
        "service answers SERVING. Puts: `KV.Put`; gets: `KV.Get`; `batch*`: `KV.Batch`; "
        "`write*`: the bidi `KV.Write` stream, each client process keeping its share of the "
        "in-flight messages outstanding on one stream.",
        "  - etcd: one member (`--initial-cluster` of itself), default options, so a put is "
        "acknowledged after the raft entry is fsynced to the WAL. Reached over gRPC with stubs "
        "compiled at run time from `bench/etcd.proto` (KV.Put and KV.Range only); gets are "
        "`Range` with `serializable=true` (answered from the member's local state, no raft "
        "round). Ready = a Range answered.",
        "  - Redis: `redis-server --appendonly yes --appendfsync always|everysec --save \"\"`. "
        "With `always` the AOF is fsynced before replies are sent (one fsync per event-loop "
        "turn, so concurrent clients share it); with `everysec` an acknowledged SET may be lost "
        "on a crash: it is the not-durable reference. SET / GET through redis-py's asyncio "
        "client (with hiredis). Ready = PING answered.",
        "- Clients: up to "
        f"{c['processes']} processes running asyncio (the stock loop), started once for the run; "
        "a point's in-flight requests are split over them (1 -> 1; 16 -> 8 + 8; 128 -> 64 + 64). "
        "Each in-flight slot sends its next request as soon as its previous one is answered. "
        "Connections are opened and warmed (one request per slot) before the point's clock "
        "starts; all processes start together. gRPC: one channel (HTTP/2 connection) per "
        "process; Redis: one connection per slot.",
        f"- Each point stops at {c['seconds']:g} s or {c['max_requests']:,} requests, whichever "
        "comes first. ops/s = answered requests (puts for batch/write) over the wall time from "
        "the first client's start to the last one's end; failed requests are not counted and "
        "are reported.",
        "- Keys are 16 ASCII digits, values 100 bytes (50 random bytes twice). Every put writes "
        f"a key not written before. Gets read random keys of a {c['read_keys']:,}-key read set "
        "stored before the first get point (Strata `KV.Batch` of 1000, etcd puts, Redis MSET); "
        "every get must find its key.",
        "- Order per Strata daemon: start, puts, read set, gets, batch, write, SIGTERM, restart "
        "on the same data dir (the replay check reads the engine's `opened ...: N WAL frames "
        "replayed` log line), SIGTERM. Peers: start, puts, read set, gets, SIGTERM.",
        "- Server CPU is the server process's user + system CPU time (threads and child "
        "processes included) over the point; client CPU adds up the client processes.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical CPUs (nproc {m['cpus_usable']})",
        f"- Memory: {report.fmt_bytes(m['memory'])}",
        f"- OS: {m['platform']}",
        f"- Python: {m['python']}",
        f"- Data dir: {m['data_dir_fs']}",
        f"- 1-minute load average at start / end: {m.get('loadavg_start')} / "
        f"{m.get('loadavg_end')} (above ~0.5, other processes were competing for the CPUs)",
        "- Servers: " + ", ".join(f"{LABELS[s]} {v.get('version') or '?'}"
                                  for s, v in run["services"].items() if not v.get("missing")),
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "",
        "Raw figures (every field, per server and workload) are in `server.json` beside this "
        "page. Reproduce with `python -m bench server` from the repository root (etcd and Redis "
        "from Debian's `etcd-server` and `redis-server` packages, `pip install redis hiredis`); "
        "`--quick` for a smoke run, `--help` for options.",
        "",
    ]
    missing = {s: v["missing"] for s, v in run["services"].items() if v.get("missing")}
    if missing:
        lines += ["## Servers without figures", ""]
        lines += [f"- {LABELS[s]}: {why}" for s, why in missing.items()] + [""]
    return "\n".join(lines)


def write_docs(run: dict[str, Any], docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    chart = docs_dir / "server.png"
    try:
        draw_chart(run, chart)
        has_chart = True
    except Exception as exc:  # a chart is a convenience; the table is the record
        print(f"chart not drawn: {exc!r}", file=sys.stderr)
        has_chart = False
    (docs_dir / "server.md").write_text(render_markdown(run, has_chart), encoding="utf-8")
    raw = dict(run)
    raw["workloads"] = [asdict(w) for w in run["workloads"]]
    (docs_dir / "server.json").write_text(json.dumps(raw, indent=1, default=str) + "\n",
                                          encoding="utf-8")
