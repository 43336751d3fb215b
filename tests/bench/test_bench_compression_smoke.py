"""Smoke test of bench/compression.py: a tiny run of Strata's codecs, checked for
shape and for what compression must do (text shrinks, random does not), not speed."""

from __future__ import annotations

from bench import compression as c


def test_each_codec_is_measured_and_text_shrinks(tmp_path, monkeypatch):
    monkeypatch.setattr(c, "_configs", lambda: [
        ("Strata", codec, (lambda codec=codec: c._Strata(codec))) for codec in ("none", "lz4", "zstd")])
    doc = c.run(3000, 300, str(tmp_path), verbose=False)
    res = {(r["values"], r["codec"]): r for r in doc["results"]}
    assert len(res) == 6 and not any("error" in r for r in res.values())
    for r in res.values():
        assert r["table_bytes"] > 0 and r["get_per_s"] > 0 and r["scan_per_s"] > 0
    assert res["text", "lz4"]["table_bytes"] < 0.8 * res["text", "none"]["table_bytes"]
    assert res["text", "zstd"]["table_bytes"] < res["text", "lz4"]["table_bytes"]
    # random values do not compress: stored as they are, within a few bytes
    assert abs(res["random", "zstd"]["table_bytes"] - res["random", "none"]["table_bytes"]) < 2048
    headers, rows = c._rows(doc)
    assert len(rows) == 6 and all(len(r) == len(headers) for r in rows)
