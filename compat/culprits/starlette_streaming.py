"""Starlette ``StreamingResponse``: a body generator holding a cancel scope across
``yield``, abandoned when uvicorn cancels the request at shutdown
(Kludex/starlette#1102: no release closes the body iterator; remedy).

    python starlette_streaming.py                    # the bug
    python starlette_streaming.py --variant closing  # the remedy: a StreamingResponse
                                                     # that closes its body in the streaming task

One process: uvicorn serves a Starlette app on 127.0.0.1 (an ephemeral port)
and an httpx client in the same loop requests ``/stream``, reads one chunk and
stops reading until uvicorn pauses writing (server state, polled, bounded):
the streaming task waits in ``send()`` with the generator suspended at
``yield`` inside ``with anyio.move_on_after(...)``.  Then the server shuts
down; after ``timeout_graceful_shutdown`` uvicorn cancels the request task.
``StreamingResponse.stream_response`` stops iterating without closing the
generator: on anyio >= 4.14 the streaming child's end fails on anyio's
per-child scope (the generator's scope is in the way), and the event loop's
finalizer later closes the generator in a task of its own.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from itertools import count
from typing import Any

from _driver import finish, leaves, trace

trace()  # before anyio, starlette and uvicorn are imported

import anyio  # noqa: E402
import anyio.lowlevel  # noqa: E402
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

CHUNK = b"x" * (256 * 1024)
seen: dict[str, Any] = {"chunks_sent": 0, "errors": []}
request_done: asyncio.Event | None = None


async def body_holding_move_on_after():
    with anyio.move_on_after(3600):  # a deadline for the whole stream: the bug
        for _ in count():
            await anyio.lowlevel.checkpoint()
            seen["chunks_sent"] += 1
            yield CHUNK  # suspended here, scope open, when the request is cancelled


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator in the streaming task, however streaming stops."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


def make_app(variant: str) -> Starlette:
    async def stream(request):
        cls = ClosingStreamingResponse if variant == "closing" else StreamingResponse
        return cls(body_holding_move_on_after(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/stream", stream)])


def outer(app):
    """Records what escapes the app; signals the end of the request."""

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            seen["errors"] += leaves(exc)
            raise
        finally:
            assert request_done is not None
            request_done.set()

    return asgi


async def wait_for(predicate, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await asyncio.sleep(0.005)  # polling server state, bounded


async def main(variant: str) -> None:
    global request_done
    request_done = asyncio.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(outer(make_app(variant)), log_level="critical", lifespan="off",
                            timeout_graceful_shutdown=0.2)
    server = uvicorn.Server(config)
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="uvicorn")
    await wait_for(lambda: server.started)

    def paused() -> bool:
        return any(c.flow is not None and c.flow.write_paused for c in server.server_state.connections)

    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False)
    async with client, client.stream("GET", "/stream") as response:
        chunks = response.aiter_raw()
        await chunks.__anext__()  # one chunk, then a slow client
        await wait_for(paused)
        server.should_exit = True  # a deploy stops the server under an open stream
        await wait_for(request_done.is_set)
        await chunks.aclose()
    await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=("bug", "closing"), default="bug")
    args = parser.parse_args()
    asyncio.run(main(args.variant))  # asyncio.run() finalizes the abandoned generator at the latest
    seen["answer"] = "done"
    sys.exit(finish(seen))
