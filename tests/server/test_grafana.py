"""deploy/grafana/strata.json: every panel's expression names metrics the daemon exports
(the documented list, which the integration tests compare with running daemons), and
nothing else."""

from __future__ import annotations

import json
import os
import re

from strata.server.metrics import documented_families

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "grafana",
                         "strata.json")

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


def exported_series() -> set[str]:
    out = set()
    for name, kind, _, _ in documented_families():
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions,
    keywords, label names (inside {} or after by/without/on) or durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        after = e[m.end():].lstrip()
        if word.lower() in PROMQL_WORDS or after.startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_are_found_in_promql():
    assert metric_names('histogram_quantile(0.99, sum by (le, method) '
                        '(rate(strata_request_seconds_bucket{code!="OK"}[5m])))') == {
        "strata_request_seconds_bucket"}
    assert metric_names("a / b == 1 and on (x) c") == {"a", "b", "c"}


def test_every_expression_names_exported_metrics():
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    known = exported_series()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"{expr!r} names no metric"
        assert names <= known, f"{expr!r}: {sorted(names - known)} not exported"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
