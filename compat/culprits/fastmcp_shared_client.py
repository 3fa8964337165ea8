"""fastmcp < 2.6.0: one ``Client`` shared by two tasks (PrefectHQ/fastmcp#533, #622; fix #635).

    python fastmcp_shared_client.py                     # shared Client, streamable HTTP
    python fastmcp_shared_client.py --transport memory  # ... to an in-process server
    python fastmcp_shared_client.py --shape proxy       # FastMCPProxy serving two concurrent requests
    python fastmcp_shared_client.py serve               # the MCP server (used by the above)

Before 2.6.0 ``Client.__aenter__`` opened the session (an ``AsyncExitStack``
around ``Client._context_manager``) only for the first of several concurrent
``async with client`` blocks, counting them; ``Client.__aexit__`` closed it when
the count fell back to 0 -- in whichever task left last.  2.6.0 runs the session
in a background task of its own (``Client._session_runner``).

Order, by events: task A enters (A's task opens the session), task B enters, A
leaves and ends, B calls a tool and leaves: B closes the stack A's task entered.
The proxy shape is #533/#622 itself: two requests to a ``FastMCPProxy`` share
its ``Client``; request A's handler leaves it with the session's scopes still
open inside its own request scope ("isn't the current tasks's current cancel
scope"), request B's handler is the last to leave and closes them.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>`` with what the application saw.  No network: the server is a
subprocess on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from _driver import HttpServer, command_line, finish, gathered, serve_http, trace

HERE = Path(__file__).resolve()
REQUEST_TIMEOUT = 3.0  # the affected release leaves proxy request B hanging


def make_server(gates: dict[str, asyncio.Event] | None = None):
    """The tool server; with ``gates`` (in-process only) ``hold_a``/``hold_b``
    wait on events, which orders two proxied requests exactly."""
    from fastmcp import FastMCP

    server = FastMCP("verify-culprits-fastmcp")

    @server.tool()
    async def echo(text: str) -> str:
        return f"echo:{text}"

    if gates is not None:

        @server.tool()
        async def hold_a() -> str:
            gates["a_inside"].set()  # request A holds the proxy's client now
            await gates["b_inside"].wait()
            return "a"

        @server.tool()
        async def hold_b() -> str:
            gates["b_inside"].set()
            await gates["a_left"].wait()  # request A has left the client
            return "b"

    return server


async def shared_client(target) -> list[object]:
    from fastmcp import Client

    client = Client(target)
    a_inside, b_inside, a_left = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def task_a() -> str:
        try:
            async with client:
                out = await client.call_tool("echo", {"text": "a"})
                a_inside.set()
                await b_inside.wait()
            return out[0].text
        finally:
            a_left.set()

    async def task_b() -> str:
        await a_inside.wait()
        async with client:
            b_inside.set()
            await a_left.wait()
            out = await client.call_tool("echo", {"text": "b"})
        return out[0].text

    results = await asyncio.gather(
        asyncio.create_task(task_a(), name="task-A"),
        asyncio.create_task(task_b(), name="task-B"),
        return_exceptions=True,
    )
    try:
        await client.close()
    except Exception:
        pass  # the affected release may leave it half-closed
    return results


async def proxy() -> list[object]:
    from fastmcp import Client, FastMCP

    gates = {k: asyncio.Event() for k in ("a_inside", "b_inside", "a_left")}
    proxy_server = FastMCP.as_proxy(Client(make_server(gates)), name="proxy")

    async def request_a(front) -> str:
        try:
            out = await front.call_tool("hold_a", {})
            return out[0].text
        finally:
            gates["a_left"].set()

    async def request_b(front) -> str:
        await gates["a_inside"].wait()
        out = await front.call_tool("hold_b", {})
        return out[0].text

    async def via_front(fn) -> str:
        async with Client(proxy_server) as front:  # one front client per request
            return await asyncio.wait_for(fn(front), REQUEST_TIMEOUT)

    return await asyncio.gather(
        asyncio.create_task(via_front(request_a), name="request-A"),
        asyncio.create_task(via_front(request_b), name="request-B"),
        return_exceptions=True,
    )


def main() -> int:
    parser = command_line(__doc__, shapes=("client", "proxy"))
    parser.add_argument("--transport", choices=("http", "memory"), default="http")
    args = parser.parse_args()
    if args.command == "serve":
        serve_http(make_server().http_app())
        return 0
    trace()
    if args.shape == "proxy":
        results = asyncio.run(proxy())
    elif args.transport == "http":
        with HttpServer(HERE, "/mcp/") as url:
            results = asyncio.run(shared_client(url))
    else:
        results = asyncio.run(shared_client(make_server()))
    return finish(gathered(results))


if __name__ == "__main__":
    sys.exit(main())
