"""The mcp Python SDK's most reported misuse: a client whose transport and session
live on an ``AsyncExitStack`` from ``connect()`` to ``cleanup()``
(modelcontextprotocol/python-sdk#79, #577, #831).  No SDK release changes it:
the application's ``connect()``/``cleanup()`` is the code to fix.

    python mcp_sdk_client.py --shape split         # connect() in task 1, cleanup() in task 2
    python mcp_sdk_client.py --shape tg-child      # connect() in a task-group child that ends,
                                                   # cleanup() in the host task
    python mcp_sdk_client.py --shape out-of-order  # one task, two clients, the first closed first
    python mcp_sdk_client.py --shape same-task     # the fix: one task, closed in reverse order
    python mcp_sdk_client.py serve --name NAME     # the stdio MCP server (used by the above)

``stdio_client`` and ``ClientSession`` both hold anyio task groups, so one
``cleanup()`` call unwinds two scopes (one failure, one incident).  From anyio
4.14 a task-group child that ends with them open fails on anyio's own
per-child scope: the session's task group is the scope in the way.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.  Offline: the servers are stdio subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from _driver import clean_env, command_line, finish, leaves, serve_add, trace

HERE = Path(__file__).resolve()


class ToolClient:
    """The tutorial-style client: transport and session on an exit stack."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exit_stack = contextlib.AsyncExitStack()
        self.session: Any = None

    async def connect(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=sys.executable, args=[str(HERE), "serve", "--name", self.name],
                                       env=clean_env())
        read, write = await self.exit_stack.enter_async_context(stdio_client(params))
        self.session = await self.exit_stack.enter_async_context(ClientSession(read, write))
        await self.session.initialize()

    async def add(self, a: int, b: int) -> str:
        result = await self.session.call_tool("add", {"a": a, "b": b})
        return result.content[0].text

    async def cleanup(self) -> None:
        await self.exit_stack.aclose()


async def split(out: dict[str, Any]) -> None:
    client = ToolClient("probe")

    async def setup() -> None:
        await client.connect()
        out["answer"] = await client.add(2, 3)

    async def teardown() -> None:
        await client.cleanup()

    await asyncio.create_task(setup(), name="setup-task")
    try:
        await asyncio.create_task(teardown(), name="cleanup-task")
    except BaseException as exc:
        out["errors"] += leaves(exc)


async def tg_child(out: dict[str, Any]) -> None:
    import anyio

    client = ToolClient("probe")

    async def connector() -> None:
        await client.connect()
        out["answer"] = await client.add(2, 3)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(connector, name="connect")
    except BaseException as exc:  # anyio >= 4.14: the child's own end fails
        out["errors"] += leaves(exc)
    try:
        await client.cleanup()
    except BaseException as exc:
        out["errors"] += leaves(exc)


async def two_clients(out: dict[str, Any]) -> tuple[ToolClient, ToolClient]:
    """Two clients connected one after the other in this task, both used."""
    first, second = ToolClient("first"), ToolClient("second")
    await first.connect()
    await second.connect()
    out["answer"] = await first.add(2, 3) + "," + await second.add(2, 3)
    return first, second


async def out_of_order(out: dict[str, Any]) -> None:
    first, second = await two_clients(out)
    for client in (first, second):  # first-in-first-out: the bug
        try:
            await client.cleanup()
        except BaseException as exc:
            out["errors"] += leaves(exc)


async def same_task(out: dict[str, Any]) -> None:
    first, second = await two_clients(out)
    await second.cleanup()
    await first.cleanup()


SHAPES = {"split": split, "tg-child": tg_child, "out-of-order": out_of_order, "same-task": same_task}


def main() -> int:
    parser = command_line(__doc__, shapes=tuple(SHAPES))
    parser.add_argument("--name", default="probe", help="serve: the server's name")
    args = parser.parse_args()
    if args.command == "serve":
        serve_add(args.name)
        return 0
    trace()
    out: dict[str, Any] = {"errors": []}
    asyncio.run(SHAPES[args.shape](out))
    return finish(out, answer_has="5")


if __name__ == "__main__":
    sys.exit(main())
