"""The election's durable state survives power cuts and refuses damage."""

from __future__ import annotations

import pytest

from strata.replication.state import FilePersistence
from strata.storage.errors import Corruption
from strata.storage.vfs import MemFS


def test_a_saved_vote_survives_a_power_cut_and_a_new_one_replaces_it():
    fs = MemFS()
    fs.mkdir("/d")
    fs.sync_dir("/")
    p = FilePersistence("/d", fs)
    assert p.load() == (0, None)
    p.save(3, "b")
    fs.reset_to_synced_state()  # what a power cut leaves: only synced bytes and entries
    assert FilePersistence("/d", fs).load() == (3, "b")
    p.save(4, None)
    assert FilePersistence("/d", fs.synced_copy()).load() == (4, None)


def test_on_disk_too(tmp_path):
    p = FilePersistence(str(tmp_path))
    p.save(12, "node-a")
    assert FilePersistence(str(tmp_path)).load() == (12, "node-a")


@pytest.mark.parametrize("damage", [lambda b: b[:-1] + bytes([b[-1] ^ 1]),
                                    lambda b: b[:3], lambda b: b"", lambda b: b"x" * 20])
def test_damage_is_corruption_not_a_fresh_start(tmp_path, damage):
    """Reading a damaged file as (0, None) could let a node vote twice in one term."""
    p = FilePersistence(str(tmp_path))
    p.save(7, "c")
    data = (tmp_path / "ELECTION").read_bytes()
    (tmp_path / "ELECTION").write_bytes(damage(data))
    with pytest.raises(Corruption):
        FilePersistence(str(tmp_path)).load()
