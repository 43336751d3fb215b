"""Seeding a replica from a checkpoint of the master: serve it in checksummed chunks,
fetch it (resuming after a broken stream), install it in place of the replica's
database while the engine is closed.

    <data_dir>/resync/            the checkpoint being received
    <data_dir>/resync/COMPLETE    written (synced) once every file is there
    <data_dir>/replication-checkpoints/<id>/   checkpoints a master serves

Installing (storage.checkpoint.install, through the vfs seam) is idempotent: the
engine's files are removed, the checkpoint's hard-linked in, then COMPLETE and
resync/ are removed; a crash anywhere in between repeats the install at the next
start (`finish_install`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import time
from collections.abc import AsyncIterator

import grpc
from crc32c import crc32c

from strata.storage import checkpoint as storage_checkpoint
from strata.storage.vfs import OsFS
from strata_client._proto import strata_pb2 as pb

log = logging.getLogger("strata.replication")

RESYNC_DIR = "resync"
SERVED_DIR = "replication-checkpoints"
COMPLETE = storage_checkpoint.COMPLETE
CHUNK = 1 << 20


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Served:
    """The checkpoints one master serves: made on demand, kept a while for resumption."""

    def __init__(self, data_dir: str, keep_s: float = 600.0) -> None:
        self.root = os.path.join(data_dir, SERVED_DIR)
        self.keep_s = keep_s
        shutil.rmtree(self.root, ignore_errors=True)  # from an earlier run: stale
        self._lock = asyncio.Lock()

    async def open(self, engine, checkpoint_id: int) -> tuple[int, str, int]:
        """(id, directory, LSN) of the checkpoint to send: `checkpoint_id` if it is
        still here, else a new one."""
        async with self._lock:
            path = os.path.join(self.root, str(checkpoint_id))
            if checkpoint_id and os.path.isdir(path):
                with open(os.path.join(path, "LSN")) as f:
                    return checkpoint_id, path, int(f.read())
            self._prune()
            os.makedirs(self.root, exist_ok=True)
            new_id = time.time_ns()
            path = os.path.join(self.root, str(new_id))
            lsn = engine.last_lsn
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, engine.checkpoint, path)
            with open(os.path.join(path, "LSN"), "w") as f:
                f.write(str(lsn))
            log.info("checkpoint %d for a replica: LSN %d, %.1f MB in %.2fs", new_id, lsn,
                     _size(path) / 1e6, time.monotonic() - t0)
            return new_id, path, lsn

    def _prune(self) -> None:
        if not os.path.isdir(self.root):
            return
        now = time.time_ns()
        for name in os.listdir(self.root):
            if name.isdigit() and (now - int(name)) / 1e9 > self.keep_s:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    async def chunks(self, engine, req) -> AsyncIterator:
        """The FetchCheckpoint stream: every file in chunks, from (file, offset) on."""
        cid, path, lsn = await self.open(engine, req.checkpoint_id)
        resumed = cid == req.checkpoint_id
        files = sorted(n for n in os.listdir(path) if n != "LSN")
        start = files.index(req.file) if resumed and req.file in files else 0
        first = True
        loop = asyncio.get_running_loop()
        for i in range(start, len(files)):
            name = files[i]
            offset = req.offset if resumed and i == start and req.file == name else 0
            size = os.path.getsize(os.path.join(path, name))
            while True:
                data = await loop.run_in_executor(None, _read, os.path.join(path, name),
                                                  offset, CHUNK)
                end = offset + len(data) >= size
                yield pb.CheckpointChunk(
                    checkpoint_id=cid, lsn=lsn, file=name, offset=offset, data=data,
                    crc32c=crc32c(data), file_done=end, done=end and i == len(files) - 1,
                    files=files if first else (), term=engine.term)
                first = False
                offset += len(data)
                if end:
                    break
        if not files:
            yield pb.CheckpointChunk(checkpoint_id=cid, lsn=lsn, done=True)


def _read(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


async def fetch(stub, node: str, data_dir: str, metadata: tuple = (), attempts: int = 30,
                timeout: float = 600.0) -> int:
    """Fetch the master's checkpoint into <data_dir>/resync/ and mark it COMPLETE; a
    broken stream resumes where it stopped (same checkpoint, file and offset). Returns
    the checkpoint's LSN. Raises the last error after `attempts` failures."""
    dest = os.path.join(data_dir, RESYNC_DIR)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    cid, file, offset, lsn = 0, "", 0, 0
    received = 0
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    for attempt in range(attempts):
        try:
            req = pb.FetchCheckpointRequest(node=node, checkpoint_id=cid, file=file, offset=offset)
            async for ch in stub.FetchCheckpoint(req, metadata=metadata, timeout=timeout):
                if ch.checkpoint_id != cid:  # a new checkpoint (the old one was gone)
                    if cid:
                        log.warning("checkpoint %d is gone on the master; starting over", cid)
                        shutil.rmtree(dest, ignore_errors=True)
                        os.makedirs(dest)
                    cid = ch.checkpoint_id
                lsn = ch.lsn
                if ch.file:
                    if crc32c(ch.data) != ch.crc32c:
                        raise ValueError(f"checkpoint chunk {ch.file}@{ch.offset} fails its checksum")
                    await loop.run_in_executor(None, _write, os.path.join(dest, ch.file),
                                               ch.offset, ch.data, ch.file_done)
                    received += len(ch.data)
                    file, offset = ch.file, ch.offset + len(ch.data)
                if ch.done:
                    await loop.run_in_executor(None, _complete, dest)
                    dt = time.monotonic() - t0
                    log.info("checkpoint %d received: LSN %d, %.1f MB in %.2fs (%.1f MB/s)",
                             cid, lsn, received / 1e6, dt, received / 1e6 / max(dt, 1e-9))
                    return lsn
            raise ConnectionError("the checkpoint stream ended early")
        except (grpc.RpcError, ConnectionError, ValueError, OSError) as e:
            if attempt == attempts - 1:
                raise
            pause = random.uniform(0, min(5.0, 0.1 * 2 ** attempt))
            log.warning("checkpoint fetch broke at %s@%d (%s); resuming in %.2fs",
                        file or "start", offset, e.details() if isinstance(e, grpc.RpcError)
                        else e, pause)
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


def _write(path: str, offset: int, data: bytes, done: bool) -> None:
    with open(path, "r+b" if offset and os.path.exists(path) else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        f.write(data)
        if done:
            f.flush()
            os.fsync(f.fileno())


def _complete(dest: str) -> None:
    _fsync_dir(dest)
    with open(os.path.join(dest, COMPLETE), "wb") as f:
        f.write(b"1")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(dest)


def finish_install(data_dir: str) -> bool:
    """Replace the database in `data_dir` by the fetched checkpoint, if one is complete;
    drop a partial one. Call with the engine closed. Returns whether one was installed.
    The install itself, and which files it replaces, are storage's (checkpoint.install)."""
    return storage_checkpoint.install(OsFS(), data_dir, os.path.join(data_dir, RESYNC_DIR))
