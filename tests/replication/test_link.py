"""A replication link's status (replication/link.py) from what its peer acknowledged:
failed, stalled, degraded, healthy, and the lag as the age of the oldest frame the peer
has not acknowledged."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from strata.replication.link import (
    WINDOW,
    GroupAppend,
    PeerLink,
    ReplicaTooOld,
    Window,
    _Session,
)
from strata.storage import Engine, record
from strata.storage.vfs import MemFS
from strata_client._proto import strata_pb2 as pb

ET = 1.0


class FakeCluster:
    """What a link reads of its cluster: the timeouts and when frames became durable."""

    election_timeout = ET
    heartbeat_interval = 0.1

    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []  # (last LSN of a group, time)

    def frame_age(self, acked: int, now: float) -> float:
        if not self.times or self.times[-1][0] <= acked:
            return 0.0
        i = bisect.bisect_right(self.times, acked, key=lambda e: e[0])
        return now - self.times[i][1]


def link() -> tuple[PeerLink, FakeCluster]:
    c = FakeCluster()
    return PeerLink(c, "b", "127.0.0.1:1", term=3), c


def test_a_peer_that_never_acknowledged_is_failed_and_has_no_stream():
    ln, _ = link()
    assert ln.state(10.0, 5) == "failed"
    assert not ln.connected and ln.next_lsn == 0


def test_states_follow_acknowledgements_not_reconnects():
    ln, c = link()
    c.times = [(10, 1.0)]
    ln.last_answer, ln.match, ln.progress_at = 1.0, 10, 1.0
    assert ln.state(1.05, 10) == "healthy"
    assert ln.state(1.5, 10) == "degraded"  # older than three heartbeats
    assert ln.state(1.0 + ET, 10) == "failed"


def test_a_peer_that_answers_without_progress_while_behind_is_stalled():
    ln, c = link()
    c.times = [(10, 1.0), (20, 2.0)]
    ln.match, ln.progress_at = 10, 1.0
    ln.last_answer = 3.0  # it answers heartbeats ...
    assert ln.lag_s(3.05) == 3.05 - 2.0
    assert ln.state(3.05, 20) == "stalled"  # ... but LSNs 11-20 wait for over ET
    ln.match, ln.progress_at = 20, 3.04  # it catches up
    assert ln.lag_s(3.05) == 0.0
    assert ln.state(3.05, 20) == "healthy"


def test_slow_progress_is_not_stalled():
    ln, c = link()
    c.times = [(10, 1.0), (20, 2.9)]
    ln.match, ln.progress_at, ln.last_answer = 10, 1.0, 3.0
    # Its acknowledged LSN has not moved for 2 s, but the frames it lacks are 0.15 s old.
    assert ln.state(3.05, 20) == "healthy"


# -- the window of Appends in flight (link.Window) ------------------------------------


def test_one_acknowledgement_answers_every_append_sent_up_to_the_one_it_echoes():
    w = Window()
    sent = [w.stamp(1.0 + i) for i in range(4)]
    assert len(w) == 4
    assert w.ack(sent[2]) == 3  # the replica wrote the first three as one group
    assert len(w) == 1
    assert w.ack(sent[2]) == 0  # a repeated or stale acknowledgement answers nothing
    assert w.ack(sent[3]) == 1 and len(w) == 0


def test_sent_strictly_increases_when_the_clock_does_not_move():
    w = Window()
    a = w.stamp(5.0)
    b = w.stamp(5.0)
    c = w.stamp(4.0)
    assert a < b < c
    assert w.ack(a) == 1 and len(w) == 2  # answers the first only


def test_a_shared_encoding_is_used_only_when_its_sent_is_later_than_the_last():
    w = Window()
    w.stamp(2.0)  # a heartbeat went out after the group was published at 1.5
    assert not w.stamp_exactly(1.5) and len(w) == 1
    assert w.stamp_exactly(2.5) and len(w) == 2


def test_the_window_fills_at_window_appends_and_an_ack_makes_room():
    w = Window()
    sent = [w.stamp(float(i)) for i in range(WINDOW)]
    assert w.full
    assert w.ack(sent[0]) == 1 and not w.full


class _Stream:
    """The Follow stream's write side: the LSN ranges of the Appends written."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    async def write(self, data: bytes) -> None:
        frames = pb.ToReplica.FromString(data).append.frames
        if frames:
            self.sent.append((record.frame_span(frames)[0], _last_lsn(frames)))


def _last_lsn(frames: bytes) -> int:
    last = 0
    for fr in record.iter_frames(frames, 0):
        last = fr.lsn
    return last


def test_a_wal_read_that_stops_inside_a_queued_group_sends_the_rest_of_it():
    """A peer catching up reads the WAL (about MAX_APPEND bytes an Append) until it
    meets what the listener queued. A read that stops inside a queued commit group
    must go on from the WAL: the queued group no longer starts where the peer is, and
    nothing else would ever send its rest (the peer stalled for good)."""
    c = FakeCluster()
    c.node_id, c.address, c.commit_lsn = "a", "127.0.0.1:1", 0
    with Engine.open("/m", fs=MemFS(), durability="always") as m:
        frames: list[bytes] = []
        m.add_commit_listener(frames.extend)
        m.begin_term(3, "a")
        for i in range(3):
            m.put(b"small%d" % i, b"v")
        big = b"x" * 100_000
        for i in range(12):  # 1.2 MB: more than one Append's MAX_APPEND of WAL
            m.put(b"big%02d" % i, big)
        raws = [bytes(f) for f in frames]
        lsns = [record.frame_span(r) for r in raws]
        ln = PeerLink(c, "b", "127.0.0.1:2", term=3)
        s = ln._session = _Session(1)
        # The last 12 frames as one commit group the listener queued while the peer
        # was still reading the WAL from LSN 1.
        ln.offer(GroupAppend(lsns[4][0], lsns[-1][1], b"".join(raws[4:]), 1.0, (3, "a", "x", 0)))
        stream = _Stream()

        async def run() -> None:
            task = asyncio.ensure_future(ln._send(stream, m, s))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if s.next_lsn > m.last_lsn:
                    break
            m.put(b"after", b"v")  # and what comes after it is sent too
            tail = frames[-1]
            ln.offer(GroupAppend(*record.frame_span(tail), bytes(tail), 2.0, (3, "a", "x", 0)))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if s.next_lsn > m.last_lsn:
                    break
            task.cancel()

        asyncio.run(run())
        got = [lsn for first, last in stream.sent for lsn in range(first, last + 1)]
        assert got == list(range(1, m.last_lsn + 1))


class _OldReplicaCall:
    """A Follow stream to a replica that says hello as a release before WAL frame
    format 4 does (no wal_version); records what the master writes."""

    def __init__(self, wal_version: int) -> None:
        self.hello = pb.FromReplica(hello=pb.Hello(node="b", term=3, last_lsn=0,
                                                   wal_version=wal_version))
        self.written: list[bytes] = []

    async def read(self):
        return self.hello

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    def cancel(self) -> None:
        pass


def test_a_replica_that_cannot_read_this_logs_frames_is_sent_nothing():
    """A release before format 4 would skip the frames that carry a commit time as an
    unknown type, and so silently lose those writes: it is refused, not fed."""
    c = FakeCluster()
    call = _OldReplicaCall(wal_version=0)
    c.follow_call = lambda peer: call
    ln = PeerLink(c, "b", "127.0.0.1:2", term=3)
    with pytest.raises(ReplicaTooOld, match="upgrade it"):
        asyncio.run(ln._session_run())
    assert call.written == []
