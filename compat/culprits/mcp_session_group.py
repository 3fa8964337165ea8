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

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from _driver import clean_env, command_line, finish, leaves, serve_add, trace

HERE = Path(__file__).resolve()


def _params():
    from mcp import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=[str(HERE), "serve"], env=clean_env())


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
    args = command_line(__doc__, shapes=("external-stack", "owned")).parse_args()
    if args.command == "serve":
        serve_add("verify-group")
        return 0
    trace()
    out: dict[str, Any] = {"errors": []}

    async def go() -> None:
        try:
            await {"external-stack": external_stack, "owned": owned}[args.shape](out)
        except BaseException as exc:
            out["errors"] += leaves(exc)

    asyncio.run(go())
    return finish(out, answer_has="5")


if __name__ == "__main__":
    sys.exit(main())
