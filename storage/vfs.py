"""The file-system seam: every byte the engine puts on disk goes through here.

As LevelDB's `Env` and Pebble's `vfs.FS`, this is one small interface with
three implementations:

- `OsFS`: production; plain `os` calls, `fdatasync`, `posix_fallocate`, mmap.
- `MemFS`: a strict in-memory file system for tests. Like Pebble's
  `vfs.NewStrictMem()`, `reset_to_synced_state()` forgets every byte written
  after a file's last `sync()` and every directory entry (create, rename,
  remove) made after its directory's last `sync_dir()`: a power cut.
- `FaultFS`: wraps another FS and fails the Nth write, sync, rename or create
  with an `OSError` (ENOSPC, EIO, ...).

The seam costs one call per group commit, not per record: the WAL hands a whole
group to `WritableFile.write` and syncs once.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import threading
import time
from typing import Protocol


class WritableFile(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def sync(self) -> None: ...
    def truncate(self, size: int) -> None: ...
    def close(self) -> None: ...


class ReadableFile(Protocol):
    """A read-only view of a whole file; `buf` supports len() and slicing."""

    buf: bytes | mmap.mmap | memoryview

    def close(self) -> None: ...


class FileLock(Protocol):
    def release(self) -> None: ...


class FileSystem(Protocol):
    """The engine's only way to the disk (LevelDB's Env, Pebble's vfs.FS).

    Callers never ask which file system they were given: what differs is a
    capability (`local_path`) or a method with one meaning everywhere
    (`lock`, `link_or_copy`).
    """

    def create(self, path: str, preallocate: int = 0) -> WritableFile: ...

    def reopen(self, path: str, size: int) -> WritableFile:
        """Open the existing file `path` for writing from offset `size`, keeping the
        space allocated past it (a preallocated WAL segment taken up again).

        REQUIRES: every byte past `size` is zero (allocated, never written): the
        writes overwrite them in place and a reader stops at the first zeros.
        """
        ...

    def open_read(self, path: str) -> ReadableFile: ...
    def read_bytes(self, path: str) -> bytes: ...
    def exists(self, path: str) -> bool: ...
    def size(self, path: str) -> int: ...
    def mtime(self, path: str) -> float: ...
    def listdir(self, path: str) -> list[str]: ...
    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def link(self, src: str, dst: str) -> None: ...
    def truncate(self, path: str, size: int) -> None: ...
    def sync_dir(self, path: str) -> None: ...
    def sync_file(self, path: str) -> None: ...
    def free_bytes(self, path: str) -> int: ...

    def lock(self, path: str) -> FileLock:
        """Take the exclusive lock file `path`; raise BlockingIOError if it is held."""
        ...

    def link_or_copy(self, src: str, dst: str) -> None:
        """Hard-link src to dst, or copy it (synced) where links are impossible."""
        ...

    def local_path(self, path: str) -> str | None:
        """`path` as another process may open it through the OS, or None if the files
        live elsewhere (in memory) or must not be touched behind this object's back
        (fault injection): work is then kept in this process."""
        ...


def write_file_atomic(fs: FileSystem, path: str, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file.

    Write a temporary, fsync it, rename over the target, fsync the directory:
    POSIX makes the rename durable only once the directory is synced.
    """
    tmp = path + ".tmp"
    f = fs.create(tmp)
    try:
        f.write(data)
        f.sync()
    finally:
        f.close()
    fs.rename(tmp, path)
    fs.sync_dir(os.path.dirname(path) or ".")


# --------------------------------------------------------------------------- OS


class _OsWritable:
    __slots__ = ("_fd", "path")

    def __init__(self, path: str, preallocate: int, offset: int | None = None) -> None:
        self.path = path
        if offset is not None:  # reopen: no O_TRUNC, which would give the allocation back
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            os.lseek(self._fd, offset, os.SEEK_SET)
            return
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        if preallocate:
            try:
                # Allocating the blocks up front lets fdatasync skip the size
                # update: ~1.5x faster syncs on ext4 (../shared/DESIGN.md).
                os.posix_fallocate(self._fd, 0, preallocate)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    os.close(self._fd)
                    raise

    def write(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._fd
        n = os.write(fd, data)
        if n != len(data):  # short write: rare, but allowed by POSIX
            view = memoryview(data)[n:]
            while view:
                n = os.write(fd, view)
                view = view[n:]

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        """Cut the file to `size` bytes and write on from there (a half-written frame
        after a full disk)."""
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _OsReadable:
    __slots__ = ("buf", "_mm")

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                self._mm = None
                self.buf: bytes | mmap.mmap = b""
            else:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self.buf = self._mm

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                # A memoryview into the map is still alive somewhere; the map is
                # released when that view is collected.
                pass
            self._mm = None


class _OsLock:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


class OsFS:
    """The real file system."""

    def create(self, path: str, preallocate: int = 0) -> WritableFile:
        return _OsWritable(path, preallocate)

    def reopen(self, path: str, size: int) -> WritableFile:
        return _OsWritable(path, 0, offset=size)

    def open_read(self, path: str) -> ReadableFile:
        return _OsReadable(path)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def mtime(self, path: str) -> float:
        return os.path.getmtime(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def lock(self, path: str) -> _OsLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BlockingIOError(errno.EWOULDBLOCK, "locked by another process", path) from None
        return _OsLock(fd)

    def link_or_copy(self, src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(src, dst)
            self.sync_file(dst)

    def local_path(self, path: str) -> str | None:
        return os.path.abspath(path)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def free_bytes(self, path: str) -> int:
        """Bytes an unprivileged writer may still use on the file system holding `path`."""
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def sync_file(self, path: str) -> None:
        """fsync a file this process did not write (what an earlier run left in the page cache)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ strict memory


class _Inode:
    __slots__ = ("data", "synced", "mtime")

    def __init__(self) -> None:
        self.data = bytearray()
        self.synced = b""
        self.mtime = time.time()


class _MemWritable:
    __slots__ = ("_fs", "_inode", "_closed")

    def __init__(self, fs: MemFS, inode: _Inode) -> None:
        self._fs = fs
        self._inode = inode
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write to closed file")
        with self._fs._lock:
            self._inode.data += data
            self._inode.mtime = time.time()

    def sync(self) -> None:
        with self._fs._lock:
            self._inode.synced = bytes(self._inode.data)

    def truncate(self, size: int) -> None:
        with self._fs._lock:
            del self._inode.data[size:]

    def close(self) -> None:
        self._closed = True


class _MemReadable:
    __slots__ = ("buf",)

    def __init__(self, data: bytes) -> None:
        self.buf = data

    def close(self) -> None:
        pass


class _MemLock:
    __slots__ = ("_fs", "_key")

    def __init__(self, fs: MemFS, key: str) -> None:
        self._fs = fs
        self._key = key

    def release(self) -> None:
        with self._fs._lock:
            self._fs._locks.discard(self._key)


class MemFS:
    """A strict in-memory file system: a power cut is `reset_to_synced_state()`.

    Paths are normalised; directories must be created with `mkdir`. A directory
    entry survives a reset only if its parent was `sync_dir`ed after the entry
    was made; a file's bytes survive only up to its last `sync()`.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # dir path -> {name: inode or None for a sub-directory}
        self._dirs: dict[str, dict[str, _Inode | None]] = {"/": {}}
        self._synced_dirs: dict[str, dict[str, _Inode | None]] = {"/": {}}
        self._locks: set[str] = set()  # paths locked by lock(): held in this process only

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        path = os.path.normpath(os.path.join("/", path))
        return os.path.dirname(path), os.path.basename(path)

    def _dir(self, d: str) -> dict[str, _Inode | None]:
        try:
            return self._dirs[d]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such directory", d) from None

    def _inode(self, path: str) -> _Inode:
        d, name = self._split(path)
        node = self._dir(d).get(name)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return node

    def create(self, path: str, preallocate: int = 0) -> WritableFile:
        with self._lock:
            d, name = self._split(path)
            if os.path.join(d, name) in self._dirs:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            inode = _Inode()
            self._dir(d)[name] = inode
            return _MemWritable(self, inode)

    def reopen(self, path: str, size: int) -> WritableFile:
        # This file system allocates nothing ahead: the zeros past `size` that the
        # contract promises are simply not there, and writes append from `size`.
        with self._lock:
            inode = self._inode(path)
            del inode.data[size:]
            return _MemWritable(self, inode)

    def open_read(self, path: str) -> ReadableFile:
        return _MemReadable(self.read_bytes(path))

    def read_bytes(self, path: str) -> bytes:
        with self._lock:
            return bytes(self._inode(path).data)

    def exists(self, path: str) -> bool:
        with self._lock:
            full = os.path.normpath(os.path.join("/", path))
            if full in self._dirs:
                return True
            d, name = self._split(path)
            return name in self._dirs.get(d, {})

    def size(self, path: str) -> int:
        with self._lock:
            return len(self._inode(path).data)

    def mtime(self, path: str) -> float:
        with self._lock:
            return self._inode(path).mtime

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            return list(self._dir(os.path.normpath(os.path.join("/", path))))

    def mkdir(self, path: str) -> None:
        with self._lock:
            full = os.path.normpath(os.path.join("/", path))
            parts = [p for p in full.split("/") if p]
            cur = "/"
            for p in parts:
                child = os.path.join(cur, p)
                if child not in self._dirs:
                    self._dirs[child] = {}
                    self._dirs[cur][p] = None
                cur = child

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        with self._lock:
            full = os.path.normpath(os.path.join("/", path))
            if full not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            if self._dirs[full]:
                raise OSError(errno.ENOTEMPTY, "directory not empty", path)
            del self._dirs[full]
            d, name = self._split(full)
            self._dir(d).pop(name, None)

    def remove(self, path: str) -> None:
        with self._lock:
            d, name = self._split(path)
            entries = self._dir(d)
            if name not in entries:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            del entries[name]

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            sd, sn = self._split(src)
            dd, dn = self._split(dst)
            node = self._inode(src)
            del self._dir(sd)[sn]
            self._dir(dd)[dn] = node

    def link(self, src: str, dst: str) -> None:
        with self._lock:
            dd, dn = self._split(dst)
            node = self._inode(src)
            if dn in self._dir(dd):
                raise FileExistsError(errno.EEXIST, "file exists", dst)
            self._dir(dd)[dn] = node

    def truncate(self, path: str, size: int) -> None:
        with self._lock:
            inode = self._inode(path)
            if size < len(inode.data):
                del inode.data[size:]
            else:
                inode.data += bytes(size - len(inode.data))
            inode.synced = bytes(inode.data)

    def sync_dir(self, path: str) -> None:
        with self._lock:
            full = os.path.normpath(os.path.join("/", path))
            self._synced_dirs[full] = dict(self._dir(full))

    def synced_copy(self) -> MemFS:
        """A new MemFS holding only what survives a power cut right now.

        Lets a test cut the power at any instant while the engine keeps
        running on this one.
        """
        with self._lock:
            copy = MemFS()
            inodes: dict[int, _Inode] = {}

            def restore(d: str) -> None:
                entries: dict[str, _Inode | None] = {}
                for name, node in self._synced_dirs.get(d, {}).items():
                    if node is None:
                        entries[name] = None
                        restore(os.path.join(d, name))
                    else:
                        new = inodes.get(id(node))
                        if new is None:
                            new = inodes[id(node)] = _Inode()
                            new.data = bytearray(node.synced)
                            new.synced = node.synced
                        entries[name] = new
                copy._dirs[d] = entries

            restore("/")
            copy._synced_dirs = {d: dict(e) for d, e in copy._dirs.items()}
            return copy

    def sync_file(self, path: str) -> None:
        with self._lock:
            inode = self._inode(path)
            inode.synced = bytes(inode.data)

    def free_bytes(self, path: str) -> int:
        return 1 << 62  # memory: a full disk is FaultFS's to simulate

    def lock(self, path: str) -> _MemLock:
        key = os.path.normpath(os.path.join("/", path))
        with self._lock:
            if key in self._locks:
                raise BlockingIOError(errno.EWOULDBLOCK, "locked", path)
            self._locks.add(key)
        return _MemLock(self, key)

    def link_or_copy(self, src: str, dst: str) -> None:
        self.link(src, dst)  # one inode, as a hard link; tables are never modified

    def local_path(self, path: str) -> str | None:
        return None

    def reset_to_synced_state(self) -> None:
        """Simulate a power cut: drop every unsynced byte and directory entry."""
        with self._lock:
            dirs: dict[str, dict[str, _Inode | None]] = {}

            def restore(d: str) -> None:
                entries = dict(self._synced_dirs.get(d, {}))
                dirs[d] = entries
                for name, node in entries.items():
                    if node is None:
                        restore(os.path.join(d, name))

            restore("/")
            for entries in dirs.values():
                for node in entries.values():
                    if node is not None:
                        node.data = bytearray(node.synced)
            self._dirs = dirs
            self._synced_dirs = {d: dict(e) for d, e in dirs.items()}


# ------------------------------------------------------------------ fault injection


class _FaultWritable:
    __slots__ = ("_fs", "_inner")

    def __init__(self, fs: FaultFS, inner: WritableFile) -> None:
        self._fs = fs
        self._inner = inner

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._fs._maybe_fail("write")
        except OSError:
            if self._fs.partial_writes:  # a short write, then the error: as write(2) may do
                self._inner.write(bytes(data)[: len(data) // 2])
            raise
        self._inner.write(data)

    def sync(self) -> None:
        self._fs._maybe_fail("sync")
        self._inner.sync()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def close(self) -> None:
        self._inner.close()


class FaultFS:
    """Wraps a file system and fails chosen operations with an OSError.

    `fail("sync", after=3, err=errno.EIO)` lets three syncs through and fails
    every later one until `heal()`; `once=True` fails only the next matching
    call. Kinds: create, write, sync, rename, remove.
    """

    def __init__(self, inner: FileSystem) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._rules: dict[str, list[int]] = {}  # kind -> [remaining_ok, errno, once]
        self.partial_writes = False

    def fail(self, kind: str, after: int = 0, err: int = errno.ENOSPC, once: bool = False,
             partial: bool = False) -> None:
        """`partial`: a failing write first writes half its bytes (a short write)."""
        with self._lock:
            self._rules[kind] = [after, err, int(once)]
            if kind == "write":
                self.partial_writes = partial

    def heal(self) -> None:
        with self._lock:
            self._rules.clear()

    def _maybe_fail(self, kind: str) -> None:
        with self._lock:
            rule = self._rules.get(kind)
            if rule is None:
                return
            if rule[0] > 0:
                rule[0] -= 1
                return
            if rule[2]:
                del self._rules[kind]
            code = rule[1]
        raise OSError(code, f"injected {os.strerror(code)} on {kind}")

    def create(self, path: str, preallocate: int = 0) -> WritableFile:
        self._maybe_fail("create")
        return _FaultWritable(self, self.inner.create(path, preallocate))

    def reopen(self, path: str, size: int) -> WritableFile:
        self._maybe_fail("create")
        return _FaultWritable(self, self.inner.reopen(path, size))

    def rename(self, src: str, dst: str) -> None:
        self._maybe_fail("rename")
        self.inner.rename(src, dst)

    def remove(self, path: str) -> None:
        self._maybe_fail("remove")
        self.inner.remove(path)

    def sync_file(self, path: str) -> None:
        self._maybe_fail("sync")
        self.inner.sync_file(path)

    def local_path(self, path: str) -> str | None:
        return None  # faults are injected here: no worker process may bypass it

    def link_or_copy(self, src: str, dst: str) -> None:
        self._maybe_fail("create")
        self.inner.link_or_copy(src, dst)

    def free_bytes(self, path: str) -> int:
        """0 while writes are made to fail with ENOSPC: the disk looks full."""
        with self._lock:
            full = any(rule[1] in (errno.ENOSPC, errno.EDQUOT) for rule in self._rules.values())
        return 0 if full else self.inner.free_bytes(path)

    def __getattr__(self, name: str):  # open_read, exists, listdir, ... pass through
        return getattr(self.inner, name)
