"""Checkpoints: a consistent, openable copy of a database in another directory, for
backups and (with replication) for seeding a new or far-behind replica.

A checkpoint is the tables of one version hard-linked (copied across file
systems), a fresh manifest naming that version and flush point, and the WAL
segments from the flush point on, copied up to their last whole frame. The
engine captures the version, flush point and segments together and pins them
(`Engine.checkpoint`); this module only writes the copy.
"""

from __future__ import annotations

import logging
import os

from . import record
from .filenames import segment_name, table_name
from .manifest import Version, VersionSet
from .vfs import FileSystem
from .wal import Wal

log = logging.getLogger("strata.checkpoint")


def write(fs: FileSystem, db_path: str, dest: str, version: Version, flushed_lsn: int,
          next_file: int, wal: Wal, segments: list[tuple[int, str]],
          terms: tuple[tuple[int, int], ...] = (), term: int = 0) -> None:
    """Write the copy into `dest`, which must not exist; everything synced when it
    returns. On failure the partial directory is removed and the error raised.
    REQUIRES: `version` referenced and `segments` pinned by the caller."""
    made = False
    try:
        fs.mkdir(dest)
        made = True
        fs.sync_dir(os.path.dirname(os.path.abspath(dest)))
        for _, f in version.files():
            fs.link_or_copy(os.path.join(db_path, table_name(f.number)),
                            os.path.join(dest, table_name(f.number)))
        vs = VersionSet(fs, dest)
        vs.current = version
        vs.flushed_lsn = flushed_lsn
        vs.next_file = next_file
        vs.terms, vs.term = terms, term
        vs.create()
        vs.close()
        for first, path in segments:
            _copy_segment(fs, wal, first, path, os.path.join(dest, segment_name(first)))
        fs.sync_dir(dest)
    except BaseException:
        if made:
            _remove_partial(fs, dest)
        raise


def _copy_segment(fs: FileSystem, wal: Wal, first: int, path: str, out_path: str) -> None:
    """Copy a segment up to its last whole frame (the open one may be mid-write)."""
    f = wal.open_segment(first, path)
    try:
        buf = f.buf
        end = record.HEADER_SIZE
        try:
            for fr in record.iter_frames(buf, record.HEADER_SIZE):
                end = fr.offset + record.FRAME_HEADER_SIZE + len(fr.payload)
        except record.BadFrame:
            pass  # a frame being written right now: stop before it
        data = bytes(buf[:end])
    finally:
        f.close()
    out = fs.create(out_path)
    try:
        out.write(data)
        out.sync()
    finally:
        out.close()


def _remove_partial(fs: FileSystem, dest: str) -> None:
    try:
        for name in fs.listdir(dest):
            fs.remove(os.path.join(dest, name))
        fs.rmdir(dest)
    except OSError as e:
        log.error("could not remove the partial checkpoint %s: %s", dest, e)
