"""Restarts do not spend WAL retention: history from LSN 1 survives 20 clean restarts
(issue 20: each start left a 9 MiB preallocated segment that retention counted in full,
and after 10 restarts a subscription from LSN 1 answered compacted)."""

from __future__ import annotations

import os
import threading

from strata_client import Client, errors


def test_history_from_lsn_1_survives_twenty_sigterm_restarts(daemon_factory, tmp_path):
    data = str(tmp_path / "data")
    lsns: list[int] = []
    d = None
    for i in range(20):
        d = daemon_factory(data_dir=data)
        with Client(d.grpc) as c:
            lsns += [c.put(b"r%02d:%d" % (i, j), b"x" * 100) for j in range(5)]
        assert d.terminate() == 0, d.logs()
    assert lsns == list(range(1, 101))
    # Segments that hold frames keep only those bytes; at most the newest two files
    # (the last open segment and the empty one taken up next) are preallocated.
    wal = sorted(n for n in os.listdir(data) if n.startswith("wal-"))
    sizes = [os.path.getsize(os.path.join(data, n)) for n in wal]
    assert sum(sizes[:-2]) < 100 * 200 + 20 * 24, list(zip(wal, sizes))
    d = daemon_factory(data_dir=data)
    with Client(d.grpc) as c:
        got: list = []
        done = threading.Event()

        def collect() -> None:
            try:
                for ev in c.subscribe(from_lsn=1, timeout=30):
                    got.append(ev)
                    if len(got) == len(lsns):
                        break
            except errors.StrataError as e:
                got.append(e)
            done.set()

        t = threading.Thread(target=collect, daemon=True)
        t.start()
        assert done.wait(30), got[-3:]
        t.join(5)
    assert not any(isinstance(e, Exception) for e in got), got[-1]
    assert [e.lsn for e in got] == lsns
    assert [e.key for e in got] == [b"r%02d:%d" % (i, j) for i in range(20) for j in range(5)]
