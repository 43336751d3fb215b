"""Client and AsyncClient offer the same methods with the same signatures: what one
can do the other can, awaitable (or as an async iterator). Compared with inspect, so
that a method added to one and not the other fails here."""

from __future__ import annotations

import inspect

import pytest

from strata_client import AsyncClient, Client

# The same on both: nothing to await (consume returns the open subscription).
PLAIN = {"batching_stats", "breaker_of", "consume"}
STREAMS = {"scan", "subscribe", "write_stream"}
CONTEXT = {"__enter__": "__aenter__", "__exit__": "__aexit__"}


def _public(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls)
            if not name.startswith("_") or name == "__init__"}


def test_both_clients_have_the_same_public_names():
    assert _public(Client).keys() == _public(AsyncClient).keys()
    expected = {"put", "get", "get_entry", "delete", "batch", "compare_and_set", "scan",
                "write_stream", "publish", "subscribe", "consume", "status", "checkpoint",
                "compact", "transfer_leader", "consumers", "delete_consumer",
                "batching_stats", "close"}
    assert expected <= _public(Client).keys()


@pytest.mark.parametrize("name", sorted(n for n, v in _public(Client).items() if callable(v)))
def test_same_signatures_sync_and_awaitable(name):
    sync, aio = getattr(Client, name), getattr(AsyncClient, name)
    s, a = inspect.signature(sync), inspect.signature(aio)
    assert list(s.parameters.values()) == list(a.parameters.values()), name
    if name in PLAIN or name == "__init__":
        assert s.return_annotation == a.return_annotation
        assert not inspect.iscoroutinefunction(aio)
    elif name in STREAMS:
        assert a.return_annotation == "Async" + s.return_annotation, name
        assert not inspect.iscoroutinefunction(aio)
    else:
        assert inspect.iscoroutinefunction(aio), f"AsyncClient.{name} is not awaitable"
        assert not inspect.iscoroutinefunction(sync)
        assert s.return_annotation == a.return_annotation, name


@pytest.mark.parametrize("sync,aio", CONTEXT.items())
def test_context_managers(sync, aio):
    assert inspect.signature(getattr(Client, sync)).parameters.keys() == \
        inspect.signature(getattr(AsyncClient, aio)).parameters.keys()
    assert inspect.iscoroutinefunction(getattr(AsyncClient, aio))
    assert not hasattr(AsyncClient, sync) and not hasattr(Client, aio)
