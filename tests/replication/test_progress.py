"""The commit point and its waiters (replication/progress.py), driven by scripts in
testdata/progress, as etcd-raft's interaction tests are: a directive per block, the
expected output after `----`, a blank line between blocks. `STRATA_REWRITE=1` rewrites
the expected outputs from what the code prints (then read the diff).

Directives:
    new quorum=N mode=async|quorum|sync   a master's Progress (and a Follower on it)
    term-start lsn=L                      this master's term marker is durable at L
    new-term                              a new term begins (won or lost)
    deliver local=L [PEER=M ...]          durable LSNs: this node's log end, peers' acks
    wait lsn=L name=X [live=M,...]        a write at L waits (or is answered at once)
    release [live=M,...]                  which waiters may be answered now
    fail                                  every waiter fails (step-down, stop)
    crash                                 a restart: nothing in memory survives
    append commit=C log=L now=T           a replica takes an Append
    unfit now=T [timeout=E] [max-lag=S]   whether the replica may be read from
    status                                the commit point and what waits
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.replication.progress import Follower, Progress

DATA = Path(__file__).parent / "testdata" / "progress"


def _args(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words)


def _lsns(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


class Driver:
    def __init__(self) -> None:
        self.quorum, self.mode = 2, "quorum"
        self._new()

    def _new(self) -> None:
        self.progress = Progress(self.quorum, self.mode)
        self.follower = Follower(self.progress)

    def run(self, line: str) -> str:
        cmd, *words = line.split()
        a = _args(words)
        p = self.progress
        if cmd == "new":
            self.quorum, self.mode = int(a["quorum"]), a["mode"]
            self._new()
            return "ok"
        if cmd == "term-start":
            p.term_started(int(a["lsn"]))
            return "ok"
        if cmd == "new-term":
            p.begin_term()
            return "ok"
        if cmd == "deliver":
            local = int(a.pop("local"))
            moved = p.advance(local, (int(v) for v in a.values()))
            return f"commit {p.commit_lsn}" + (" (moved)" if moved else "")
        if cmd == "wait":
            lsn, live = int(a["lsn"]), _lsns(a.get("live", ""))
            if p.releasable(lsn, live):
                return f"{a['name']}: answered at once"
            p.wait(lsn, a["name"])
            return f"{a['name']}: waits"
        if cmd == "release":
            return "released: " + (" ".join(p.release(_lsns(a.get("live", "")))) or "none")
        if cmd == "fail":
            return "failed: " + (" ".join(p.fail()) or "none")
        if cmd == "crash":
            self._new()
            return "ok"
        if cmd == "append":
            moved = self.follower.append(int(a["commit"]), int(a["log"]), float(a["now"]))
            return f"known commit {self.follower.commit_lsn}" + (" (moved)" if moved else "")
        if cmd == "unfit":
            why = self.follower.unfit(float(a["now"]), float(a.get("timeout", "1")),
                                      float(a.get("max-lag", "5")))
            return why or "fit"
        if cmd == "status":
            return (f"commit {p.commit_lsn} term-start {p.term_start} waiting {p.waiting} "
                    f"heard {self.follower.heard_at} behind-since {self.follower.behind_since}")
        raise ValueError(f"unknown directive {cmd!r}")


def _blocks(text: str) -> list[tuple[str, str]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        if not lines:
            continue
        sep = lines.index("----")
        out.append(("\n".join(lines[:sep]), "\n".join(lines[sep + 1:])))
    return out


@pytest.mark.parametrize("script", sorted(p.name for p in DATA.glob("*.txt")))
def test_progress_script(script: str) -> None:
    path = DATA / script
    blocks = _blocks(path.read_text())
    d = Driver()
    got = [(cmds, "\n".join(d.run(c) for c in cmds.splitlines())) for cmds, _ in blocks]
    if os.environ.get("STRATA_REWRITE"):
        path.write_text("\n\n".join(f"{c}\n----\n{o}" for c, o in got) + "\n")
        return
    for (cmds, want), (_, out) in zip(blocks, got):
        assert out == want, f"{script}: after\n{cmds}"
