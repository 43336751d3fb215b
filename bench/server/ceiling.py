"""The ceiling: a bare grpc.aio server (uvloop) with empty handlers on Strata's
own KV proto. What a Python gRPC server costs per call when it does nothing,
so that every run prints Strata's unary figures as a share of it.

    python -m bench.server.ceiling --listen 127.0.0.1:7400
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import grpc
import uvloop

from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

VALUE = b"v" * 100


class EmptyKV(pbg.KVServicer):
    """Answers at once: an LSN from a counter, a found value, each op's LSN."""

    def __init__(self) -> None:
        self.lsn = itertools.count(1)

    async def Put(self, request, context):
        return pb.PutResponse(lsn=next(self.lsn))

    async def Delete(self, request, context):
        return pb.DeleteResponse(lsn=next(self.lsn))

    async def Get(self, request, context):
        return pb.GetResponse(found=True, value=VALUE, lsn=1)

    async def Batch(self, request, context):
        lsns = [next(self.lsn) for _ in request.ops]
        return pb.BatchResponse(lsn=lsns[-1] if lsns else 0, lsns=lsns)


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pbg.add_KVServicer_to_server(EmptyKV(), server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.server.ceiling", description=__doc__)
    p.add_argument("--listen", required=True, help="host:port")
    a = p.parse_args(argv)
    uvloop.install()
    try:
        asyncio.run(serve(a.listen))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
