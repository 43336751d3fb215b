"""Background work: the interval sync, flushes, compactions, pauses for disk space,
and installing their results as version edits.

Threads (named in engine.py's docstring): strata-wal-sync runs
`_interval_sync_loop`, strata-flush `_flush_loop`, strata-compaction
`_compaction_loop`. Flushes and merges run in worker processes (`worker_for`) when
compaction_executor="process". A part of `Engine` (engine.py), which owns the
fields used here.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

from . import compaction, sstable
from .errors import (
    WritesStopped,
    is_no_space,
)
from .filenames import (
    compaction_prefix,
    is_compaction_output,
    parse_table_name,
    table_name,
)
from .manifest import FileMeta
from .memtable import MemTable

log = logging.getLogger("strata.engine")

_WORKERS: dict[str, compaction.MergeWorker] = {}
_WORKER_LOCK = threading.Lock()


def worker_for(kind: str) -> compaction.MergeWorker:
    """The worker process for `kind` ("merge" or "flush"), shared by this process's engines.

    Two of them, so that a flush never queues behind a long merge.
    """
    with _WORKER_LOCK:
        w = _WORKERS.get(kind)
        if w is None:
            w = _WORKERS[kind] = compaction.MergeWorker()
        return w


class BackgroundWork:
    """Flushes and compactions. Mixed into Engine; each loop runs on its own thread."""

    def _interval_sync_loop(self) -> None:
        period = self.opts.sync_interval_ms / 1000.0
        while not self._closed:
            deadline = time.monotonic() + period
            with self._bg_cv:  # a condition rather than sleep: close wakes it
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._bg_cv.wait(left)
            if self._closed:
                return
            try:
                self._wal.sync_if_dirty()
            except OSError as e:
                with self._mutex:
                    self._fail(e, "WAL fsync")
                return

    def _flush_loop(self) -> None:
        while True:
            with self._bg_cv:
                while not self._imms and not self._closed:
                    self._bg_cv.wait()
                if not self._imms:
                    return
                imm = self._imms[0]
            try:
                self._flush(imm)
            except BaseException as e:
                if is_no_space(e) and self._pause("flush", e):
                    continue  # retried once space is back; writes stall at max_immutable
                if not isinstance(e, WritesStopped):
                    log.exception("flush failed")
                    with self._mutex:
                        self._fail(e, "flush")
                return
            self._resumed("flush")

    def _flush(self, imm: MemTable) -> None:
        t0 = time.monotonic()
        number = self.versions.new_file_number()
        with self._mutex:
            self._pending.add(number)
        path = os.path.join(self.path, table_name(number))
        try:
            if not len(imm):
                outs = []  # rotated for the log's sake (events only): no table, a new flush point
            elif self._worker_dir is not None:
                # Packing the dict is C, a part at a time; sorting and encoding happen
                # in the worker.
                job = compaction.FlushJob(self.fs.local_path(path), [],
                                          self._smallest_snapshot(), self.opts.codec(0),
                                          self.opts.block_size, self.opts.block_restart_interval)
                outs = worker_for("flush").run(job, functools.partial(
                    imm.raw_item_chunks, compaction.FLUSH_PART_ITEMS)).outputs
            else:
                entries = compaction.drop_obsolete(imm.sorted_entries(), self._smallest_snapshot(),
                                                   False)
                outs = sstable.build_tables(self.fs, entries, lambda i: path, 1 << 62,
                                            block_size=self.opts.block_size,
                                            compression=self.opts.codec(0),
                                            restart_interval=self.opts.block_restart_interval)
        except BaseException:
            # The half-written table goes now (its space is what the retry needs).
            try:
                self.fs.remove(path)
            except OSError:
                pass
            with self._mutex:
                self._pending.discard(number)
            raise
        edit: dict = {"flushed_lsn": imm.last_lsn}
        new_readers = {}
        if outs:
            _, props = outs[0]
            meta = FileMeta(number, props["file_size"], props["smallest"], props["largest"],
                            props["entries"], props["min_lsn"], props["max_lsn"])
            edit["add"] = [meta.to_wire(0)]
            new_readers[number] = self._open_table(number)
        self.fs.sync_dir(self.path)

        def installed() -> None:
            self._pending.discard(number)
            self._imms = self._imms[1:]
            self._maybe_schedule_locked()

        self._log_and_apply(edit, new_readers, (), installed)
        size = sum(p["file_size"] for _, p in outs)
        dt = time.monotonic() - t0
        with self._mutex:
            st = self._stats
            st.flushes += 1
            st.flush_bytes += size
            st.flush_seconds += dt
        log.info("flushed memtable to %s: %d entries, %d bytes in %.3fs (%.1f MB/s)",
                 table_name(number), len(imm), size, dt, size / max(dt, 1e-9) / 1e6)
        self._wal.purge(self.versions.flushed_lsn)
        self._delete_obsolete()

    def _log_and_apply(self, edit: dict, new_readers: dict | None = None, gone=(),
                       installed=None) -> None:
        """Make a version edit durable, then install it and publish a new read view.

        The manifest write and its fsync run outside `_mutex` (LevelDB's
        LogAndApply unlocks around them), so commit groups never wait for
        them; `_edit_lock` keeps edits in order and lets a checkpoint capture
        the version and the flush point as one. Readers of new tables are
        registered before any view can list them. `installed` runs under
        `_mutex` with the new version in place.
        """
        with self._edit_lock:
            if new_readers:
                with self._mutex:
                    self._readers.update(new_readers)
            try:
                self.versions.log_and_apply(edit)
            except BaseException as e:
                # A manifest edit half-written cannot be appended after: a
                # restart recovers it (a torn last edit is dropped).
                with self._mutex:
                    raise self._fail(e, "manifest write") from e
            with self._mutex:
                for n in gone:
                    self._readers.pop(n, None)
                if installed is not None:
                    installed()
                self._install_sv()
                self._bg_cv.notify_all()

    def _smallest_snapshot(self) -> int:
        with self._mutex:
            if self._snapshots:
                return min(self._snapshots[0], self._read_lsn)
            return self._read_lsn

    def _maybe_schedule_locked(self) -> None:
        self._compaction_requested = True
        self._bg_cv.notify_all()

    def _compaction_loop(self) -> None:
        while True:
            with self._bg_cv:
                while not self._compaction_requested and not self._closed:
                    self._bg_cv.wait()
                if self._closed:
                    return
                self._compaction_requested = False
                if self._bg_error is not None:
                    continue
                c = self._picker.pick(self.versions.current)
                if c is None and self._manual_compaction:
                    c = self._picker.pick_manual(self.versions.current, self._manual_compaction)
                if c is None:
                    self._manual_compaction = 0
                    self._bg_cv.notify_all()
                    continue
                self._compacting = True
            try:
                self._run_compaction(c)
            except compaction.Cancelled:
                log.info("compaction L%d->L%d cancelled: closing", c.level, c.output_level)
                with self._bg_cv:
                    self._compacting = False
                    self._bg_cv.notify_all()
                return
            except BaseException as e:
                with self._bg_cv:
                    self._compacting = False
                    self._bg_cv.notify_all()
                if is_no_space(e):
                    self._remove_partial_outputs()
                    if self._pause("compaction", e):
                        with self._bg_cv:
                            self._compaction_requested = True
                        continue  # writes go on; L0 grows into the slowdown thresholds
                if not isinstance(e, WritesStopped):
                    log.exception("compaction failed")
                    with self._mutex:
                        self._fail(e, "compaction")
                return
            self._resumed("compaction")
            with self._bg_cv:
                self._compacting = False
                self._compaction_requested = True
                self._bg_cv.notify_all()

    def _pause(self, what: str, error: BaseException) -> bool:
        """A flush or compaction ran out of space: wait, then let the caller retry.

        Returns False if the engine is closing. WAL writes may still fit:
        writes go on until the usual stall thresholds (immutable memtables,
        L0 files) hold them, and fail only if the log itself runs out.
        """
        with self._bg_cv:
            if what not in self._paused:
                log.warning("%s: %s paused, no space left (%s); retrying every %.0f s",
                            self.path, what, error, self._pause_s)
                if what == "flush":
                    self._stats.paused_flush += 1
                else:
                    self._stats.paused_compaction += 1
            self._paused[what] = str(error)
            self._bg_cv.wait(self._pause_s)
            return not self._closed

    def _resumed(self, what: str) -> None:
        if what in self._paused:
            with self._bg_cv:
                if self._paused.pop(what, None) is not None:
                    log.warning("%s: %s resumed", self.path, what)

    @property
    def paused(self) -> dict[str, str]:
        """Background work waiting for disk space: {"flush"|"compaction": error}."""
        return dict(self._paused)

    def _remove_partial_outputs(self) -> None:
        """Delete the temporary outputs of a compaction cut short (orphans at next open
        otherwise: removing them now gives the space back at once)."""
        for name in self.fs.listdir(self.path):
            if is_compaction_output(name):
                try:
                    self.fs.remove(os.path.join(self.path, name))
                except OSError:
                    pass

    def _run_compaction(self, c: compaction.Compaction) -> None:
        t0 = time.monotonic()
        if c.trivial_move:
            f = c.inputs[0]
            edit = {"del": [[c.level, f.number]], "add": [f.to_wire(c.output_level)]}
            self._log_and_apply(edit)
            with self._mutex:
                self._stats.trivial_moves += 1
            return
        inputs = [(c.level, f) for f in c.inputs] + [(c.output_level, f) for f in c.next_inputs]
        local = self._worker_dir
        job = compaction.MergeJob(
            dir=local or self.path,
            inputs=[os.path.join(local or self.path, table_name(f.number)) for _, f in inputs],
            smallest_snapshot=self._smallest_snapshot(),
            drop_tombstones=c.bottommost,
            target_file_size=self.opts.target_file_size,
            prefix=compaction_prefix(self.versions.new_file_number()),
            compression=self.opts.codec(c.output_level),
            block_size=self.opts.block_size, restart_interval=self.opts.block_restart_interval)
        if local is not None:
            result = worker_for("merge").run(job)
        else:
            result = compaction.run_merge(job, self.fs)
        edit: dict = {"del": [[lvl, f.number] for lvl, f in inputs], "add": []}
        new_readers = {}
        for tmp, props in result.outputs:
            number = self.versions.new_file_number()
            with self._mutex:
                self._pending.add(number)
            final = os.path.join(self.path, table_name(number))
            self.fs.rename(tmp, final)
            meta = FileMeta(number, props["file_size"], props["smallest"], props["largest"],
                            props["entries"], props["min_lsn"], props["max_lsn"])
            edit["add"].append(meta.to_wire(c.output_level))
            new_readers[number] = self._open_table(number)
        self.fs.sync_dir(self.path)
        self._log_and_apply(edit, new_readers, [f.number for _, f in inputs],
                            lambda: self._pending.difference_update(new_readers))
        dt = time.monotonic() - t0
        with self._mutex:
            st = self._stats
            st.compactions += 1
            st.compaction_read_bytes += result.read_bytes
            st.compaction_write_bytes += result.written_bytes
            st.compaction_seconds += dt
        log.info("compacted L%d->L%d: %d files, %d -> %d bytes in %.3fs (%.1f MB/s read)",
                 c.level, c.output_level, len(inputs), result.read_bytes,
                 result.written_bytes, dt, result.read_bytes / max(dt, 1e-9) / 1e6)
        self._delete_obsolete()

    def _delete_obsolete(self) -> None:
        """Unlink tables no live version lists (pinned ones stay until unpinned).

        Readers of the deleted tables stay usable for in-flight gets: their
        mmap outlives the directory entry, and they are dropped with the last
        read view that holds them.
        """
        # List first, then read the live set: a table created after the
        # listing is not in it, and one pending at listing time is pending or
        # live by the time the set is read.
        names = self.fs.listdir(self.path)
        with self._mutex:
            live = self.versions.live_files() | self._pending
            for n in [n for n in self._readers if n not in live]:
                del self._readers[n]
        for name in names:
            number = parse_table_name(name)
            if number is not None and number not in live:
                try:
                    self.fs.remove(os.path.join(self.path, name))
                except FileNotFoundError:
                    pass
