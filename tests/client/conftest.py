"""Fixtures of the client tests: scripted servers (tests/client/fake.py) and clients.

`clients` is parametrized over both clients: a test written against the blocking
interface runs once with a `Client` and once with an `AsyncClient` behind `Blocking`,
which runs each call on an event loop in a thread of its own. Calls made from several
test threads then run concurrently on that loop, as coroutines of one program would,
so the same test drives the asyncio coalescer and the asyncio retry loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import grpc
import pytest

from strata_client import AsyncClient, CircuitBreaker, Client, RetryPolicy
from strata_client.core import Consumption

from .fake import COOLDOWN, FAST, Fake, start_fake


class Blocking:
    """An asyncio object (AsyncClient, its Consumption) behind a blocking interface: its
    methods run on `loop` while the calling thread waits; coroutines are awaited there,
    async iterators are stepped there. Attributes are read and set on the object."""

    def __init__(self, wrapped: Any, loop: asyncio.AbstractEventLoop) -> None:
        object.__setattr__(self, "_wrapped", wrapped)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._wrapped, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: self._result(self._on_loop(attr, *a, **kw))

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._wrapped, name, value)

    def __iter__(self):
        return self._iterate(self._on_loop(self._wrapped.__aiter__))

    def _on_loop(self, fn, *a, **kw) -> Any:
        async def call():
            r = fn(*a, **kw)
            return await r if inspect.isawaitable(r) else r

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def _result(self, r: Any) -> Any:
        if inspect.isasyncgen(r):
            return self._iterate(r)
        if isinstance(r, Consumption):
            return Blocking(r, self._loop)
        return r

    def _iterate(self, agen):
        try:
            while True:
                try:
                    item = self._on_loop(agen.__anext__)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            self._on_loop(agen.aclose)


@pytest.fixture
def servers():
    """Factory: servers() -> a new running Fake; all are stopped at teardown."""
    started: list[grpc.Server] = []

    def make() -> Fake:
        fake, server = start_fake()
        started.append(server)
        return fake

    yield make
    for s in started:
        s.stop(0)


@pytest.fixture
def fake(servers) -> Fake:
    return servers()


@pytest.fixture(params=["Client", "AsyncClient"])
def clients(request):
    """Factory for clients with fast retry timings, closed at teardown: a Client, or an
    AsyncClient behind Blocking (see the module docstring)."""
    made: list = []
    loop = thread = None
    if request.param == "AsyncClient":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="client-loop", daemon=True)
        thread.start()

    def make(target: str, *, attempts: int = 5, threshold: int = 100, retry=None,
             cooldown: float = COOLDOWN, **kw) -> Client:
        kw.update(retry=retry or RetryPolicy(attempts=attempts, **FAST),
                  breaker=CircuitBreaker(threshold=threshold, cooldown_s=cooldown))
        c = Client(target, **kw) if loop is None else Blocking(AsyncClient(target, **kw), loop)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
    if loop is not None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
