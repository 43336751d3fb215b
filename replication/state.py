"""The election's durable state, (term, voted_for), in one small file per node.

    ELECTION   msgpack [version, term, voted_for or nil] + crc32c, 4 bytes, little endian

Written by `storage.vfs.write_file_atomic` (temporary, fsync, rename, fsync of the
directory), so a crash or a power cut leaves the old state or the new one, never a
mix; `save` returns only once the new state is durable, which the election's safety
needs (one vote per term, across restarts). A damaged file is refused with
Corruption rather than read as "never voted". Changing the layout breaks existing
nodes: bump the version.
"""

from __future__ import annotations

import os
import struct

import msgpack
from crc32c import crc32c

from strata.storage.errors import Corruption
from strata.storage.vfs import FileSystem, OsFS, write_file_atomic

FILE_NAME = "ELECTION"
VERSION = 1
_CRC = struct.Struct("<I")


class FilePersistence:
    """`election.Persistence` in `<data_dir>/ELECTION`."""

    def __init__(self, dirpath: str, fs: FileSystem | None = None) -> None:
        self.fs = fs or OsFS()
        self.path = os.path.join(dirpath, FILE_NAME)

    def load(self) -> tuple[int, str | None]:
        if not self.fs.exists(self.path):
            return 0, None
        data = self.fs.read_bytes(self.path)
        body, crc = data[:-_CRC.size], data[-_CRC.size:]
        if len(data) < _CRC.size or _CRC.unpack(crc)[0] != crc32c(body):
            raise Corruption(self.path, 0, "election state fails its checksum")
        try:
            version, term, voted_for = msgpack.unpackb(body)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise Corruption(self.path, 0, f"undecodable election state: {e}") from None
        if version != VERSION:
            raise Corruption(self.path, 0, f"election state version {version}, not {VERSION}")
        return term, voted_for

    def save(self, term: int, voted_for: str | None) -> None:
        body = msgpack.packb([VERSION, term, voted_for])
        write_file_atomic(self.fs, self.path, body + _CRC.pack(crc32c(body)))
