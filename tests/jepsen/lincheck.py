"""A linearizability checker for histories of register operations on keys.

Wing & Gong's search with Lowe's memoization, as Porcupine and Knossos do it:
the history is split by key (a key-value store is linearizable iff each key's
register is, P-compositionality), and each key's operations are searched for
an order that (1) respects real time, every operation taking effect between
its call and its return, and (2) agrees with a sequential register.

An operation whose outcome is unknown (a put that timed out, or was cut off by
a crash) has no return: it may take effect at any time after its call, or
never. It is given a return at +infinity; linearized last, a put changes
nothing any other operation observed, so "never" is covered too. Such a put
whose value no get read is left out before the search (see `check`); puts
must write distinct values for that to be exact.

Entries are (call, return) times from one clock (time.monotonic() in one
process); a put's value is what it wrote, a get's value what it read (None:
absent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Op:
    client: int
    kind: str  # "put" | "get"
    key: bytes
    value: Any  # put: the value written; get: the value read (None = absent)
    call: float
    ret: float = math.inf  # math.inf: the outcome is unknown


@dataclass
class Result:
    ok: bool
    key: bytes | None = None  # the first key whose history is not linearizable
    ops: list[Op] = field(default_factory=list)  # that key's operations, for the report

    def __bool__(self) -> bool:
        return self.ok


def check(history: list[Op], initial: Any = None, max_steps: int = 5_000_000) -> Result:
    """Whether `history` is linearizable; on failure, the key and its operations."""
    read = {(op.key, op.value) for op in history if op.kind == "get"}
    by_key: dict[bytes, list[Op]] = {}
    for op in history:
        if op.kind == "put" and op.ret == math.inf and (op.key, op.value) not in read:
            # An unknown-outcome put nobody read: linearized last it changes nothing
            # observed, and wherever else it might sit, the value it leaves until the next
            # put is read by no one. Dropping it keeps the answer and spares the search
            # (each such put could go anywhere after its call).
            continue
        by_key.setdefault(op.key, []).append(op)
    for key, ops in sorted(by_key.items()):
        if not _check_register(ops, initial, max_steps):
            return Result(False, key, sorted(ops, key=lambda o: o.call))
    return Result(True)


def _step(state: Any, op: Op) -> tuple[bool, Any]:
    if op.kind == "put":
        return True, op.value
    return op.value == state, state


class _Entry:
    __slots__ = ("op_id", "is_call", "time", "match", "prev", "next")

    def __init__(self, op_id: int, is_call: bool, time: float) -> None:
        self.op_id = op_id
        self.is_call = is_call
        self.time = time
        self.match: _Entry | None = None  # a call's return entry
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _check_register(ops: list[Op], initial: Any, max_steps: int) -> bool:
    events = []
    for i, op in enumerate(ops):
        if op.ret < op.call:
            raise ValueError(f"operation returns before its call: {op}")
        events.append((op.call, 0, i, True))
        events.append((op.ret, 1, i, False))  # at equal times, calls first: they overlap
    events.sort()
    head = _Entry(-1, False, -math.inf)  # sentinel
    prev = head
    calls: dict[int, _Entry] = {}
    for t, _, i, is_call in events:
        e = _Entry(i, is_call, t)
        if is_call:
            calls[i] = e
        else:
            calls[i].match = e
        e.prev, prev.next = prev, e
        prev = e

    def lift(call: _Entry) -> None:
        for e in (call, call.match):
            e.prev.next = e.next
            if e.next is not None:
                e.next.prev = e.prev

    def unlift(call: _Entry) -> None:
        for e in (call.match, call):
            e.prev.next = e
            if e.next is not None:
                e.next.prev = e

    state = initial
    linearized = 0  # bitset of op ids
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"linearizability search gave up after {max_steps} steps")
        if entry is None:  # cannot happen: every call's return follows it in the list
            raise AssertionError("ran past the end of the history")
        if entry.is_call:
            ok, new_state = _step(state, ops[entry.op_id])
            bits = linearized | (1 << entry.op_id)
            if ok and (bits, _freeze(new_state)) not in seen:
                seen.add((bits, _freeze(new_state)))
                stack.append((entry, state))
                state, linearized = new_state, bits
                lift(entry)
                entry = head.next
                continue
            entry = entry.next
        else:
            # A return reached before its call was linearized: undo the last choice.
            if not stack:
                return False
            call, state = stack.pop()
            linearized &= ~(1 << call.op_id)
            unlift(call)
            entry = call.next
    return True


def _freeze(value: Any) -> Any:
    return value if value is None or isinstance(value, (bytes, str, int)) else repr(value)
