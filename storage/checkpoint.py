"""Checkpoints: a consistent, openable copy of a database in another directory, for
backups and (with replication) for seeding a new or far-behind replica.

A checkpoint is the tables of one version hard-linked (copied across file
systems), a fresh manifest naming that version and flush point, and the WAL
segments from the flush point on, copied up to their last whole frame. The
engine captures the version, flush point and segments together and pins them
(`Engine.checkpoint`); this module writes the copy, and installs one fetched from
elsewhere in place of a database (`install`, for a replica seeded by its master).

Installing, all through the FileSystem seam, so that a power cut can be played at
every step (tests/storage/test_checkpoint_install.py):

    <src>/COMPLETE   written and synced by whoever filled <src>, last

The database's files (`is_engine_file`) are removed, the checkpoint's hard-linked
in, the directory synced; then COMPLETE is removed and synced, then the rest of
<src>. A power cut before COMPLETE is gone repeats the install at the next call,
one after it finds the new database in place: either way the directory opens as
the old database or the new one, never a mix.
"""

from __future__ import annotations

import logging
import os

from . import record
from .filenames import (
    CURRENT,
    NEXT_SEGMENT,
    is_database_file,
    is_temporary,
    segment_name,
    table_name,
)
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
                end = fr.offset + len(fr.raw)
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


COMPLETE = "COMPLETE"  # in a fetched checkpoint directory: every file is there, synced


def is_engine_file(name: str) -> bool:
    """Whether `name`, in a database directory, belongs to the engine's state: what an
    install replaces. LOCK is not (it is held by whoever installs), nor is anything an
    embedding program keeps beside the engine's files."""
    return is_database_file(name) or name in (CURRENT, NEXT_SEGMENT) or is_temporary(name)


def install(fs: FileSystem, db_path: str, src: str) -> bool:
    """Replace the database in `db_path` by the checkpoint in `src`, if `src` holds a
    complete one (a COMPLETE file); drop an incomplete `src`. Returns whether one was
    installed. Idempotent: after a crash or power cut anywhere inside, calling it again
    finishes the install (see the module docstring).

    REQUIRES: no engine open on `db_path`; `src` on the same file system (hard links;
    copied where links fail). Raises OSError from the file system.
    """
    if not fs.exists(src):
        return False
    if not fs.exists(os.path.join(src, COMPLETE)):
        log.warning("dropping an incomplete checkpoint in %s", src)
        _remove_tree(fs, src)
        return False
    for name in fs.listdir(db_path):
        if is_engine_file(name):
            fs.remove(os.path.join(db_path, name))
    for name in fs.listdir(src):
        if name != COMPLETE and not fs.exists(os.path.join(db_path, name)):
            fs.link_or_copy(os.path.join(src, name), os.path.join(db_path, name))
    fs.sync_dir(db_path)
    fs.remove(os.path.join(src, COMPLETE))
    fs.sync_dir(src)
    _remove_tree(fs, src)
    fs.sync_dir(db_path)
    log.info("installed the checkpoint from %s in %s", src, db_path)
    return True


def _remove_tree(fs: FileSystem, path: str) -> None:
    """Remove `path`, a directory of files, and its entry in the parent (synced)."""
    for name in fs.listdir(path):
        fs.remove(os.path.join(path, name))
    fs.rmdir(path)
    fs.sync_dir(os.path.dirname(os.path.abspath(path)))
