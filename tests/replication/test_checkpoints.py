"""Seeding a replica: the master's checkpoint in checksummed chunks, a fetch that resumes
after a broken stream at the file and byte where it stopped, and the install."""

import asyncio
import os

from strata.replication import checkpoints
from strata.storage import Engine

OPTS = dict(memtable_size=256 << 10, compaction_executor="thread")


class BreakingStub:
    """FetchCheckpoint served from a real engine; the first stream breaks after 3 chunks,
    one chunk of the second arrives damaged."""

    def __init__(self, served, engine) -> None:
        self.served, self.engine = served, engine
        self.calls = []

    def FetchCheckpoint(self, req, metadata=(), timeout=None):
        self.calls.append((req.checkpoint_id, req.file, req.offset))
        call = len(self.calls)

        async def stream():
            n = 0
            async for ch in self.served.chunks(self.engine, req):
                n += 1
                if call == 1 and n == 4:
                    raise ConnectionError("stream broken")
                if call == 2 and n == 2:
                    ch.data = b"x" + ch.data[1:]  # fails its CRC
                yield ch

        return stream()


def test_a_broken_fetch_resumes_and_the_install_opens_as_the_master(tmp_path):
    master = str(tmp_path / "master")
    with Engine.open(master, **OPTS) as db:
        for i in range(3000):
            db.put(b"k%06d" % i, os.urandom(1000))  # ~3 MB: several 1 MiB chunks
        expected = list(db.scan())
        served = checkpoints.Served(master)
        stub = BreakingStub(served, db)
        replica = tmp_path / "replica"
        replica.mkdir()
        (replica / "ELECTION").write_bytes(b"kept")
        (replica / "000099.sst").write_bytes(b"an old table")
        asyncio.run(checkpoints.fetch(stub, "r", str(replica), attempts=5))
    assert len(stub.calls) == 3
    first_id = stub.calls[1][0]
    assert first_id and all(c[0] == first_id for c in stub.calls[1:])  # the same checkpoint
    assert stub.calls[1][2] > 0 or stub.calls[1][1]  # resumed past the start
    assert checkpoints.finish_install(str(replica))
    assert not (replica / "resync").exists() and not (replica / "000099.sst").exists()
    assert (replica / "ELECTION").read_bytes() == b"kept"
    with Engine.open(str(replica), **OPTS) as db:
        assert list(db.scan()) == expected


def test_an_incomplete_fetch_is_dropped_not_installed(tmp_path):
    d = tmp_path / "replica"
    (d / "resync").mkdir(parents=True)
    (d / "resync" / "CURRENT").write_bytes(b"MANIFEST-000001\n")
    (d / "LOCK").write_bytes(b"")
    assert not checkpoints.finish_install(str(d))
    assert not (d / "resync").exists()
