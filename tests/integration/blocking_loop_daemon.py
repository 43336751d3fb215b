"""A real daemon (server/daemon.py) whose event loop can be made to stop answering,
for tests of what the HTTP threads answer meanwhile.

    python -m tests.integration.blocking_loop_daemon DATA_DIR GRPC WS HTTP

Prints `serving` once started. Each line read on stdin is a number of seconds for which
the event loop then blocks (time.sleep on the loop); end of input stops the daemon."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

from strata.server.config import Config
from strata.server.daemon import Daemon


async def main(data_dir: str, grpc: str, ws: str, http: str) -> None:
    cfg = dataclasses.replace(Config(), data_dir=data_dir, grpc_listen=grpc, ws_listen=ws,
                              metrics_listen=http)
    d = Daemon(cfg, None, {}, None)
    await d.start()
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_line() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            done.set_result(None)
            return
        time.sleep(float(line))  # the point: the loop answers nothing meanwhile

    loop.add_reader(sys.stdin.fileno(), on_line)
    print("serving", flush=True)
    await done
    await d.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
