"""A tiny "MCP-like" tool server on 127.0.0.1: JSON lines over one TCP stream.

Each request line is ``{"id": 7, "tool": "search", "delay": 0.03}``; the
server waits ``delay`` seconds (the tool's latency) and answers
``{"id": 7, "result": "..."}``.  Requests on one connection are answered
concurrently and out of order, so one connection can be shared by several
callers, exactly like a streamable-HTTP MCP session shared by parallel tool
calls.

The service starts it in its lifespan (see ``service.py``); it can also run on
its own::

    python examples/flaky_500/toolserver.py --port 7000
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_LINE = 64 * 1024


async def _handle(stream: SocketStream) -> None:
    send_lock = anyio.Lock()

    async def answer(request: dict[str, Any]) -> None:
        await anyio.sleep(float(request.get("delay", 0.0)))
        reply = {"id": request["id"], "result": f"{request.get('tool', '?')}: ok"}
        async with send_lock:
            await stream.send(json.dumps(reply).encode() + b"\n")

    reader = BufferedByteReceiveStream(stream)
    async with stream, anyio.create_task_group() as tg:
        while True:
            try:
                line = await reader.receive_until(b"\n", MAX_LINE)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                    anyio.ClosedResourceError, anyio.DelimiterNotFound):
                break
            tg.start_soon(answer, json.loads(line))
        # The client hung up: nobody is left to read pending answers.
        tg.cancel_scope.cancel()


async def serve(
    host: str = "127.0.0.1", port: int = 0, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound port through ``task_status``."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        task_status.started(listener.extra(SocketAttribute.local_port))
        await listener.serve(_handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve, args.host, args.port)
            print(f"tool server listening on {args.host}:{port}", flush=True)

    anyio.run(run)


if __name__ == "__main__":
    main()
