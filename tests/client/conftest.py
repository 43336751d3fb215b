"""Fixtures of the client tests: scripted servers (tests/client/fake.py) and clients."""

from __future__ import annotations

import grpc
import pytest

from strata_client import CircuitBreaker, Client, RetryPolicy

from .fake import COOLDOWN, FAST, Fake, start_fake


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


@pytest.fixture
def clients():
    """Factory for sync Clients with fast retry timings; closed at teardown."""
    made: list[Client] = []

    def make(target: str, *, attempts: int = 5, threshold: int = 100, retry=None,
             cooldown: float = COOLDOWN, **kw) -> Client:
        c = Client(target, retry=retry or RetryPolicy(attempts=attempts, **FAST),
                   breaker=CircuitBreaker(threshold=threshold, cooldown_s=cooldown), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
