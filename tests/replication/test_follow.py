"""A replica's Appends grouped for one fsync each (replication/follow.py).

The queue alone is driven by scripts in testdata/follow, as test_progress.py drives the
commit point: a directive per block, the expected output after `----`, a blank line
between blocks; `STRATA_REWRITE=1` rewrites the expected outputs from what the code
prints (then read the diff). Below them, the same queue feeds a real engine: a group
is one apply_frames call, one fsync, one acknowledgement.

Directives:
    new durable=L [max-pending=N] [max-group-bytes=B]   an empty queue at log end L
    append term=T sent=S commit=C [frames=TEXT]         an Append arrives (no frames:
                                                        a heartbeat)
    take                                                the next group to apply
    applied durable=L                                   the last group is durable
    failed durable=L error=TEXT                         applying the last group failed
    status                                              what waits, what is durable
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from strata.replication.follow import Append, AppendQueue, answers
from strata.storage import Closed, Engine, LogMismatch, record
from strata.storage.vfs import FaultFS, MemFS

DATA = Path(__file__).parent / "testdata" / "follow"


def _args(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words)


def _ack(a) -> str:
    return f"ack term={a.term} durable={a.durable_lsn} sent={a.sent:g}" + \
        (f" error={a.error}" if a.error else "")


class Driver:
    def __init__(self) -> None:
        self.q = AppendQueue()
        self.group = None

    def run(self, line: str) -> str:
        cmd, *words = line.split()
        a = _args(words)
        q = self.q
        if cmd == "new":
            self.q = AppendQueue(int(a["durable"]), int(a.get("max-pending", "64")),
                                 int(a.get("max-group-bytes", str(4 << 20))))
            return "ok"
        if cmd == "append":
            if q.full:
                return "full"
            took = q.put(Append(int(a["term"]), float(a["sent"]), int(a["commit"]),
                                a.get("frames", "").encode()))
            return f"queued {len(q)}" if took else "dropped (closed)"
        if cmd == "take":
            g = self.group = q.take()
            if g is None:
                return "none"
            return (f"group term={g.term} appends={len(g.appends)} "
                    f"frames={g.frames.decode() or '-'} commit={g.commit_lsn}")
        if cmd == "applied":
            return _ack(q.applied(self.group, int(a["durable"])))
        if cmd == "failed":
            return _ack(q.failed(self.group, int(a["durable"]), a["error"]))
        if cmd == "status":
            return (f"pending {len(q)} full {q.full} closed {q.closed} durable {q.durable_lsn} "
                    f"groups {q.groups} appends {q.appends}")
        raise ValueError(f"unknown directive {cmd!r}")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(comment lines, directives, expected output) of each block."""
    out = []
    for block in text.strip().split("\n\n"):
        notes = [ln for ln in block.splitlines() if ln.startswith("#")]
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        if not lines:
            continue
        sep = lines.index("----")
        out.append(("".join(n + "\n" for n in notes), "\n".join(lines[:sep]),
                    "\n".join(lines[sep + 1:])))
    return out


@pytest.mark.parametrize("script", sorted(p.name for p in DATA.glob("*.txt")))
def test_follow_script(script: str) -> None:
    path = DATA / script
    blocks = _blocks(path.read_text())
    d = Driver()
    got = [(notes, cmds, "\n".join(d.run(c) for c in cmds.splitlines()))
           for notes, cmds, _ in blocks]
    if os.environ.get("STRATA_REWRITE"):
        path.write_text("\n\n".join(f"{n}{c}\n----\n{o}" for n, c, o in got) + "\n")
        return
    for (_, cmds, want), (_, _, out) in zip(blocks, got):
        assert out == want, f"{script}: after\n{cmds}"


# -- the queue feeding a real engine --------------------------------------------------

OPTS = dict(durability="always", compaction_executor="thread")


def _master_frames(n: int) -> list[bytes]:
    """n single-frame commit groups of a master in term 1 (its term marker first), as
    its commit listener hands them to replication: one Append's frames each."""
    fs = MemFS()
    out: list[bytes] = []
    with Engine.open("/m", fs=fs, **OPTS) as m:
        m.add_commit_listener(lambda frames: out.append(b"".join(frames)))
        m.begin_term(1, "m")
        for i in range(n - 1):
            m.put(b"k%03d" % i, b"v%03d" % i)
    return out


def _apply(q: AppendQueue, eng: Engine):
    """The applier's loop step (replication/cluster.py, _follow): one group, one call."""
    g = q.take()
    try:
        if g.size:
            eng.apply_frames(g.frames)
    except Exception as e:
        return g, q.failed(g, eng.last_lsn, str(e))
    return g, q.applied(g, eng.last_lsn)


def test_a_batch_of_appends_is_one_fsync_and_one_ack_of_the_highest_lsn():
    appends = _master_frames(6)
    with Engine.open("/r", fs=MemFS(), **OPTS) as r:
        r.set_read_only(True)
        q = AppendQueue(r.last_lsn)
        for i, frames in enumerate(appends):
            q.put(Append(1, float(i + 1), i, frames))
        q.put(Append(1, 7.0, 5, b""))  # a heartbeat behind them joins the group
        syncs = r.wal_stats()["syncs"]
        g, ack = _apply(q, r)
        assert len(g.appends) == 7 and len(q) == 0
        assert r.wal_stats()["syncs"] == syncs + 1
        assert (ack.durable_lsn, ack.sent, ack.error) == (6, 7.0, "") == (r.last_lsn, 7.0, "")
        assert r.get(b"k004") == b"v004"
        assert q.take() is None


def test_a_master_that_counts_one_ack_per_append_gets_one_per_append():
    """A master of an older release (Start.group_acks unset) retires one Append per
    Ack: a group of three is answered three times, each echoing its own Append's
    `sent`, all naming the group's durable LSN; a newer master gets the one Ack."""
    appends = _master_frames(3)
    with Engine.open("/r", fs=MemFS(), **OPTS) as r:
        r.set_read_only(True)
        q = AppendQueue(r.last_lsn)
        for i, frames in enumerate(appends):
            q.put(Append(1, float(i + 1), i, frames))
        g, ack = _apply(q, r)
        assert [(a.durable_lsn, a.sent) for a in answers(g, ack, group_acks=False)] == \
            [(3, 1.0), (3, 2.0), (3, 3.0)]
        assert answers(g, ack, group_acks=True) == [ack]


def test_an_append_of_a_new_term_is_not_written_with_the_previous_terms():
    appends = _master_frames(3)
    with Engine.open("/r", fs=MemFS(), **OPTS) as r:
        q = AppendQueue(r.last_lsn)
        q.put(Append(1, 1.0, 0, appends[0]))
        q.put(Append(1, 2.0, 0, appends[1]))
        q.put(Append(2, 3.0, 0, appends[2]))  # as if a new master sent it
        syncs = r.wal_stats()["syncs"]
        g, ack = _apply(q, r)
        assert (g.term, len(g.appends), ack.durable_lsn, ack.sent) == (1, 2, 2, 2.0)
        assert r.wal_stats()["syncs"] == syncs + 1
        g = q.take()
        assert (g.term, len(g.appends)) == (2, 1)


def test_a_gap_in_the_middle_of_a_group_acks_nothing_beyond_what_is_durable():
    appends = _master_frames(5)
    with Engine.open("/r", fs=MemFS(), **OPTS) as r:
        q = AppendQueue(r.last_lsn)
        q.put(Append(1, 1.0, 0, appends[0]))
        _apply(q, r)
        q.put(Append(1, 2.0, 0, appends[1]))
        q.put(Append(1, 3.0, 0, appends[3]))  # LSN 3 never came: a gap
        q.put(Append(1, 4.0, 0, appends[4]))
        g, ack = _apply(q, r)
        assert len(g.appends) == 3
        assert "LSN" in ack.error and ack.durable_lsn == 1 == r.last_lsn
        # Nothing behind the failed group is taken, applied or acknowledged.
        assert q.closed and q.take() is None
        assert not q.put(Append(1, 5.0, 0, appends[2]))


def test_an_fsync_failure_in_a_group_acks_only_what_was_durable_before_it():
    appends = _master_frames(4)
    mem = MemFS()
    fs = FaultFS(mem)
    r = Engine.open("/r", fs=fs, **OPTS)
    q = AppendQueue(r.last_lsn)
    q.put(Append(1, 1.0, 0, appends[0]))
    _apply(q, r)
    for i in (1, 2, 3):
        q.put(Append(1, float(i + 1), 0, appends[i]))
    fs.fail("sync", err=errno.EIO, once=True)
    g, ack = _apply(q, r)
    assert len(g.appends) == 3 and ack.error
    assert ack.durable_lsn == 1
    with pytest.raises(Closed):
        r.close()
    mem.reset_to_synced_state()
    with Engine.open("/r", fs=mem, **OPTS) as r:
        assert r.last_lsn >= ack.durable_lsn  # what was acknowledged survived the power cut
        assert [fr.lsn for fr in r.read_log(1)][0] == 1


def test_frames_in_a_group_are_one_buffer_in_stream_order():
    appends = _master_frames(3)
    q = AppendQueue()
    for i, f in enumerate(appends):
        q.put(Append(1, float(i), 0, f))
    g = q.take()
    assert [fr.lsn for fr in record.iter_frames(g.frames, 0)] == [1, 2, 3]


def test_a_group_gap_raises_log_mismatch_from_the_engine():
    appends = _master_frames(3)
    with Engine.open("/r", fs=MemFS(), **OPTS) as r:
        with pytest.raises(LogMismatch):
            r.apply_frames(appends[0] + appends[2])
        assert r.last_lsn == 0
