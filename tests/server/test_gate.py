"""Gate: admission of every RPC (auth, startup, draining, rate, bulkheads) in-process,
with a stand-in for the gRPC context and no server."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from strata.server.config import Config
from strata.server.errors import Overloaded, Unauthenticated, Unavailable
from strata.server.metrics import Metrics
from strata.server.service import Gate


class Context:
    """What Gate reads from a grpc.aio context, and what it writes on failure."""

    def __init__(self, token: str | None = None, peer: str = "ipv4:127.0.0.1:5000",
                 remaining: float | None = None) -> None:
        self.md = (("authorization", f"Bearer {token}"),) if token else ()
        self._peer = peer
        self._remaining = remaining
        self.aborted: tuple | None = None
        self.trailers: tuple = ()

    def invocation_metadata(self):
        return self.md

    def peer(self) -> str:
        return self._peer

    def time_remaining(self):
        return self._remaining

    def set_trailing_metadata(self, md) -> None:
        self.trailers = md

    async def abort(self, code, message):
        self.aborted = (code, message)
        raise RuntimeError("aborted")  # grpc.aio's abort raises too


class Node:
    """Admission reads only the engine in service from the node."""

    def __init__(self) -> None:
        self.serving: object | None = object()


def gate(**cfg) -> Gate:
    return Gate(Config(**cfg), Metrics(), Node())


def test_tokens():
    g = gate(auth_token="data", admin_token="admin")
    with pytest.raises(Unauthenticated):
        g._admit(Context(), "KV.Put")
    with pytest.raises(Unauthenticated):
        g._admit(Context("wrong"), "KV.Get")
    assert g._admit(Context("data"), "KV.Put") is g.node.serving
    assert g._admit(Context("admin"), "KV.Put") is g.node.serving  # the admin token admits all
    with pytest.raises(Unauthenticated, match="admin token"):
        g._admit(Context("data"), "Admin.Checkpoint")
    assert g._admit(Context("admin"), "Admin.Compact") is g.node.serving
    assert g._admit(Context("data"), "Admin.Status") is g.node.serving
    open_gate = gate()
    assert open_gate._admit(Context(), "Admin.Compact") is open_gate.node.serving


def test_starting_and_draining_are_unavailable():
    g = gate()
    g.node.serving = None
    with pytest.raises(Unavailable, match="starting"):
        g._admit(Context(), "KV.Get")
    g = gate()
    g.drain()
    with pytest.raises(Unavailable, match="shutting down"):
        g._admit(Context(), "KV.Get")


def test_rate_limit_is_per_client_address_and_reloads():
    g = gate(rate_limit=2, rate_burst=2)
    a, b = Context(peer="ipv4:10.0.0.1:1"), Context(peer="ipv4:10.0.0.2:1")
    g._admit(a, "KV.Get")
    g._admit(a, "KV.Get")
    with pytest.raises(Overloaded):
        g._admit(a, "KV.Get")
    g._admit(b, "KV.Get")  # another address, another bucket
    g.reload(Config(rate_limit=0))
    for _ in range(10):
        g._admit(a, "KV.Get")  # 0: unlimited


def test_unary_maps_errors_and_frees_the_call_slot():
    g = gate(max_concurrent_calls=1)

    async def main():
        async def ok(engine):
            assert g.calls.active == 1
            return "answer"

        assert await g.unary("KV.Get", Context(), ok) == "answer"
        assert g.calls.active == 0

        async def stalls(engine):
            from strata.storage.errors import WriteStalled
            raise WriteStalled(36, 60.0)

        ctx = Context()
        with pytest.raises(RuntimeError, match="aborted"):
            await g.unary("KV.Put", ctx, stalls)
        assert ctx.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert g.calls.active == 0

        async def slow(engine):
            await asyncio.sleep(10)

        ctx = Context(remaining=0.05)  # the client's deadline
        with pytest.raises(RuntimeError, match="aborted"):
            await g.unary("KV.Get", ctx, slow)
        assert ctx.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert g.calls.active == 0

    asyncio.run(main())


def test_deadlines_without_a_client_deadline_and_a_client_that_goes_away():
    async def main():
        g = gate(default_deadline_s=0.05)

        async def slow(engine):
            await asyncio.sleep(10)

        ctx = Context()  # no deadline from the client: default_deadline_s applies
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(RuntimeError, match="aborted"):
            await g.unary("KV.Get", ctx, slow)
        took = asyncio.get_running_loop().time() - t0
        assert ctx.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.05 <= took < 1.0

        # A call cancelled from outside (the client went away) stays cancelled: it is no
        # deadline of ours, and nothing is answered.
        ctx = Context(remaining=10.0)
        call = asyncio.ensure_future(g.unary("KV.Get", ctx, slow))
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert ctx.aborted is None and g.calls.active == 0
        # nothing in progress: the deadline timer stops re-arming itself
        await asyncio.sleep(0.05)
        assert g._sweeper is None and not g._deadlines and not g._expired

    asyncio.run(main())
