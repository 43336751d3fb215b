"""One call's way through retries, redirects and failover, with no I/O.

`Attempts` decides where each attempt of a unary call goes, how long to wait
before it, and what the call raises when it ends; `Client._unary` (threads) and
`AsyncClient._unary` (asyncio) only send, sleep and ask it again. The rules:

- What repeating the call may do decides how it is retried (`kind`): READ is
  safe to repeat; WRITE carries request ids, so a repeat is answered with the
  first LSN by a node that knows the id instead of being written again; ONCE
  (publish, compare-and-set) must not be sent again once it may have reached a
  server; NODE (checkpoint, compaction) is one node's own operation and is
  never retried nor moved to another node.
- A NotMaster answer wrote nothing: it is followed to the master it names at
  once, and costs no attempt. A node that answered nothing is not followed
  again in the same round: the next listed node is tried instead (replicas
  keep naming a dead master until they have elected another).
- With a node list, the call keeps trying (every kind but NODE) until its
  deadline: a transient error moves it to the next listed node, and coming back
  to a node already tried since the last pause costs a back-off
  (RetryPolicy.delay, growing per round), so a circle of stale redirects or of
  refusing nodes spins slowly, not fast, until a master answers. The circuit
  breaker of a node (one per node) only steers calls to the other nodes while
  one of them has a closed circuit; it never ends a call that has time left, and
  never turns a call away from the master a NotMaster has just named.
  With one node, transient errors are retried up to RetryPolicy.attempts, each
  attempt with the whole timeout, and the circuit breaker fails calls fast.
- An attempt "may have been done" when the server said its outcome is unknown
  (trailer `strata-outcome: unknown`), when its deadline passed, or when the
  connection broke after it may have been sent (not when the connection was
  never made). A WRITE keeps retrying with the same id, and if it then has to
  end without an answer it raises OutcomeUnknown carrying its request id, never
  an error that says nothing was written. A ONCE call raises OutcomeUnknown at
  once (request id ""): sending it again could do it twice.
"""

from __future__ import annotations

import time
from typing import Protocol

import grpc

from . import errors

READ = "read"    # safe to repeat: get, scan, status
WRITE = "write"  # carries request ids: put, delete, batch, coalesced calls
ONCE = "once"    # not safe to repeat once it may have reached a server: publish, CAS
NODE = "node"    # one node's own operation: checkpoint, compaction

# grpc-core's words for a call that never left the client (the channel could not
# connect), and for a connection that broke or a server that went away under a call
# that may have been sent (grpcio 1.85: "failed to connect to all addresses; last
# error: ... Connection refused"; "Stream removed (Socket closed)" from a SIGKILLed
# server, "Cancelling all calls" from one shutting down, "GOAWAY received", ...).
# Any other UNAVAILABLE was answered by the server, whose contract is that a write it
# may have done says so (trailer strata-outcome: unknown). Words that may also be the
# server's own ("shutting down") only make the client more careful, never less.
# A retry is not started with less time than this left: it could hardly be answered,
# and its deadline passing would leave a write's outcome unknown for nothing.
MIN_ATTEMPT_S = 0.01
_NOT_SENT = ("failed to connect", "connection refused", "connections to all backends failing")
_BROKEN = ("socket", "stream removed", "connection reset", "connection closed", "broken pipe",
           "goaway", "cancelling all calls", "shut", "closed", "destroyed", "disconnected",
           "keepalive", "rst_stream", "too many pings", "end of tcp stream", "endpoint")


def may_have_been_done(e: grpc.RpcError, err: errors.StrataError) -> bool:
    """Whether a failed attempt may have reached a server and been done there."""
    if isinstance(err, errors.OutcomeUnknown):
        return True
    code = e.code() if hasattr(e, "code") else None
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return True
    if code == grpc.StatusCode.UNAVAILABLE:
        details = ((e.details() if hasattr(e, "details") else "") or "").lower()
        if any(w in details for w in _NOT_SENT):
            return False
        return any(w in details for w in _BROKEN)
    return False


class Breaker(Protocol):
    def allow(self) -> bool: ...
    def before(self) -> None: ...
    def success(self) -> None: ...
    def failure(self) -> None: ...


class Policy(Protocol):
    attempts: int

    def delay(self, attempt: int) -> float: ...


class Nodes(Protocol):
    """What Attempts needs of the client's core (strata_client.core.Nodes): its node
    list, the node new calls start at (updated as calls learn where the master is), a
    breaker per node, the policy."""

    endpoints: list[str]
    target: str
    retry: Policy
    closed: bool

    def breaker_of(self, target: str) -> Breaker: ...


class Attempts:
    """The state of one call. Drive it as:

        a = Attempts(client, kind, timeout, request_id)
        while True:
            target, timeout = a.next()        # raises when the call must end
            try: resp = send(target, timeout)
            except grpc.RpcError as e:
                sleep(a.failed(e))            # raises when the call must end
                continue
            a.answered(); return resp

    Not thread-safe: one per call, used by the thread or task making the call."""

    def __init__(self, client: Nodes, kind: str, timeout: float, request_id: str = "") -> None:
        self.client = client
        self.kind = kind
        self.timeout = timeout
        self.request_id = request_id
        self.multi = len(client.endpoints) > 1 and kind != NODE
        self.until = time.monotonic() + timeout
        self.target = client.target
        # Rotation through the node list: advanced by transient errors only, so that
        # redirects to a dead master in between cannot keep a node from its turn.
        eps = client.endpoints
        self.listed = eps.index(self.target) if self.target in eps else len(eps) - 1
        self.seen = {self.target}   # nodes tried since the last back-off
        self.down: set[str] = set()  # ... of which these answered nothing
        self.failures = 0           # transient failures (one node: at most retry.attempts)
        self.rounds = 0             # back-offs so far, the exponent of the next
        self.redirected = False     # the target is the master a NotMaster just named
        self.maybe_done = False     # a WRITE attempt may have been done
        self.last: errors.StrataError | None = None

    def next(self) -> tuple[str, float]:
        """Where the next attempt goes and the timeout it is sent with."""
        if self.client.closed:
            raise self._end(errors.Unavailable("the client was closed", "CANCELLED"))
        breaker = self.client.breaker_of(self.target)
        if not self.multi:
            try:
                breaker.before()
            except errors.Unavailable as e:  # the circuit is open: fail fast
                raise self._end(e) from None
            return self.target, self.timeout
        left = self.until - time.monotonic()
        if left <= 0 or (self.last is not None and left < MIN_ATTEMPT_S):
            raise self._end(self.last or errors.DeadlineExceeded("deadline exceeded"))
        if self.redirected:
            # A node just named this one the master: that is news the breaker's past
            # failures do not outweigh (they are often "no master yet" answers from
            # before an election, which opened its circuit for its cooldown).
            self.redirected = False
        elif not breaker.allow():
            # Steer to a node whose circuit lets calls through; with none, try this one
            # anyway: during a failover every node may have failed lately, and the call
            # still has time.
            for nxt in self._rotation():
                if self.client.breaker_of(nxt).allow():
                    self.target = nxt
                    self.seen.add(nxt)
                    break
        return self.target, left

    def answered(self) -> None:
        """The attempt was answered: later calls start at this node."""
        self.client.breaker_of(self.target).success()
        self.client.target = self.target

    def failed(self, e: grpc.RpcError) -> float:
        """Account for a failed attempt; returns the seconds to wait before the next one.
        Raises what the call ends with: the error itself when it is not transient, when a
        single node's attempts are used up or when the deadline passed, OutcomeUnknown when
        an attempt may have been done."""
        err = errors.from_rpc_error(e)
        if getattr(e, "code", lambda: None)() == grpc.StatusCode.CANCELLED:
            # Unary calls are never cancelled by the client itself (a closed client ends
            # in next()): the server or the connection cut this one off. Try again.
            err = errors.Unavailable(err.args[0] or "cancelled", "CANCELLED")
        breaker = self.client.breaker_of(self.target)
        if err.retryable:
            breaker.failure()
        else:
            breaker.success()  # the node answered: it is up
        self.last = err
        if may_have_been_done(e, err):
            if self.kind == ONCE:
                raise self._unknown(err) from None
            self.maybe_done = self.maybe_done or self.kind == WRITE
        if isinstance(err, errors.NotMaster):
            master = err.master.rpartition("=")[2]
            if master and not (self.multi and master in self.down):
                pause = self._go(master)
                self.redirected = True
                return pause
            if self.multi:  # no master named, or one that just answered nothing
                return self._go(self._advance())
            raise err  # a replica that knows no master, and nowhere else to ask
        if not err.retryable:
            raise self._end(err)
        self.down.add(self.target)
        if self.multi:
            return self._go(self._advance())
        if self.kind in (ONCE, NODE):
            raise err  # refused, so not done: but not to be repeated without a node list
        self.failures += 1
        if self.failures >= self.client.retry.attempts:
            raise self._end(err)
        return self.client.retry.delay(self.failures - 1)

    # -- internals
    def _rotation(self) -> list[str]:
        eps = self.client.endpoints
        return [eps[(self.listed + k) % len(eps)] for k in range(1, len(eps))]

    def _advance(self) -> str:
        """The next listed node in the rotation (a transient error moves the call on)."""
        eps = self.client.endpoints
        self.listed = (self.listed + 1) % len(eps)
        if self.client.target == self.target:  # new calls should not start here either
            self.client.target = eps[self.listed]
        return eps[self.listed]

    def _go(self, target: str) -> float:
        """Move to `target`. Coming back to a node tried since the last back-off means the
        call is going round in a circle (stale redirects, refusing nodes): back off first."""
        pause = 0.0
        if target in self.seen:
            pause = self.client.retry.delay(self.rounds)
            self.rounds += 1
            self.seen.clear()
            self.down.clear()
        self.seen.add(target)
        self.target = target
        left = self.until - time.monotonic()
        if left <= 0:  # redirects too are bounded by the deadline, with or without a list
            raise self._end(self.last)
        return min(pause, left)

    def _end(self, err: errors.StrataError) -> errors.StrataError:
        """What the call raises when it ends on `err`."""
        if self.maybe_done:
            return self._unknown(err)
        if isinstance(err, errors.NotMaster):  # nodes kept redirecting until the deadline
            return errors.Unavailable(f"no master answered within {self.timeout:g}s; "
                                      f"last answer: {err}", "UNAVAILABLE")
        return err

    def _unknown(self, err: errors.StrataError) -> errors.OutcomeUnknown:
        rid = f" (request id {self.request_id}: a retry with it is answered, not done twice)" \
            if self.request_id else ""
        return errors.OutcomeUnknown(f"the call may or may not have been done{rid}; "
                                     f"last error: {err}", err.code or "UNAVAILABLE",
                                     self.request_id)
