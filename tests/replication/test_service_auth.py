"""ReplicationService admits only callers with the cluster's token (compared in
constant time by strata_client.auth, as the data services do)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from strata.replication.cluster import ReplicationService


class Context:
    def __init__(self, header: str | None) -> None:
        self.md = (("authorization", header),) if header is not None else ()
        self.aborted = None

    def invocation_metadata(self):
        return self.md

    async def abort(self, code, message):
        self.aborted = code
        raise RuntimeError("aborted")


@pytest.mark.parametrize("header,admitted", [
    ("Bearer cluster", True), ("Bearer wrong", False), ("cluster", False), (None, False)])
def test_cluster_token(header, admitted):
    svc = ReplicationService(cluster=None, token="cluster")
    ctx = Context(header)
    if admitted:
        asyncio.run(svc._auth(ctx))
    else:
        with pytest.raises(RuntimeError):
            asyncio.run(svc._auth(ctx))
    assert ctx.aborted == (None if admitted else grpc.StatusCode.UNAUTHENTICATED)


def test_no_token_admits_everyone():
    asyncio.run(ReplicationService(cluster=None)._auth(Context(None)))
