"""mcp ``ClientSessionGroup`` with an exit stack supplied by the caller
(modelcontextprotocol/python-sdk#915, also #577; no fixed release: remedy).

    python mcp_session_group.py --shape external-stack  # ClientSessionGroup(exit_stack=stack)
    python mcp_session_group.py --shape owned           # the remedy: the group owns its stack
    python mcp_session_group.py serve                   # the stdio MCP server (used by the above)

``ClientSessionGroup._establish_session`` enters each server's transport and
session in the caller's task; ``ClientSessionGroup.__aexit__`` closes every
session's exit stack concurrently, in child tasks of a new task group.  When
the group owns its exit stack, that stack has already closed them in the
caller's task; with ``exit_stack=`` of the caller's, the children exit scopes
the caller's task entered.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.  Offline: the server is a stdio subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def trace() -> None:
    import scopetrace

    scopetrace.install(exporter="jsonl", jsonl_path=os.environ["VERIFY_CULPRITS_JSONL"],
                       stack_depth=64, rate_limit=0)


def serve() -> None:
    try:
        from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x
    except ImportError:
        from mcp.server import MCPServer as Server  # mcp 2.x

    server = Server("verify-group")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    server.run()


def _params():
    from mcp import StdioServerParameters

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}
    return StdioServerParameters(command=sys.executable, args=[str(HERE), "serve"], env=env)


def _leaves(exc: BaseException) -> list[str]:
    inner = getattr(exc, "exceptions", None)  # an exception group
    if isinstance(inner, tuple):
        return [s for e in inner for s in _leaves(e)]
    return [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]


async def external_stack(out: dict[str, Any]) -> None:
    from mcp.client.session_group import ClientSessionGroup

    async with contextlib.AsyncExitStack() as stack:
        group = ClientSessionGroup(exit_stack=stack)
        async with group:
            await group.connect_to_server(_params())
            result = await group.call_tool("add", {"a": 2, "b": 3})
            out["answer"] = result.content[0].text


async def owned(out: dict[str, Any]) -> None:
    from mcp.client.session_group import ClientSessionGroup

    async with ClientSessionGroup() as group:
        await group.connect_to_server(_params())
        result = await group.call_tool("add", {"a": 2, "b": 3})
        out["answer"] = result.content[0].text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("run", "serve"), default="run")
    parser.add_argument("--shape", choices=("external-stack", "owned"), default="external-stack")
    args = parser.parse_args()
    if args.command == "serve":
        serve()
        return 0
    trace()
    out: dict[str, Any] = {"errors": []}

    async def go() -> None:
        try:
            await {"external-stack": external_stack, "owned": owned}[args.shape](out)
        except BaseException as exc:
            out["errors"] += _leaves(exc)

    asyncio.run(go())
    import scopetrace

    scopetrace.flush()
    print("RESULT " + json.dumps(out, default=str), flush=True)
    return 0 if "5" in json.dumps(out.get("answer"), default=str) else 1


if __name__ == "__main__":
    sys.exit(main())
