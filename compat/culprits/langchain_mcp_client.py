"""langchain-mcp-adapters < 0.1.0: a ``MultiServerMCPClient`` held open across tasks
(langchain-ai/langchain-mcp-adapters#99; fixed by #146 in 0.1.0).

    python langchain_mcp_client.py          # startup task / request task / shutdown task
    python langchain_mcp_client.py serve    # the stdio MCP server (used by the above)

Before 0.1.0 tools only worked while the client was entered:
``MultiServerMCPClient.__aenter__`` connected every server (transport and
``ClientSession`` on one long-lived ``self.exit_stack``), ``__aexit__`` closed it.
An application that opens it when it starts (a startup task) and closes it when
it stops (another task) -- LangServe, LangGraph's ``astream_events`` -- splits
both task groups across tasks.  From 0.1.0 the client is no context manager:
``get_tools()`` returns tools that open a session of their own per call.  This
driver does what each release allows: enter/exit on < 0.1.0, ``get_tools()`` on
>= 0.1.0; startup, a tool call in a request task, shutdown.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.  Offline: the server is a stdio subprocess.
"""

from __future__ import annotations

import asyncio
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _driver import clean_env, command_line, finish, leaves, serve_add, trace

HERE = Path(__file__).resolve()


async def app(out: dict[str, Any]) -> None:
    from langchain_mcp_adapters.client import MultiServerMCPClient

    client = MultiServerMCPClient({
        "math": {"command": sys.executable, "args": [str(HERE), "serve"], "env": clean_env(), "transport": "stdio"},
    })
    context_manager = tuple(int(p) for p in version("langchain-mcp-adapters").split(".")[:2]) < (0, 1)
    tools: list[Any] = []

    async def startup() -> None:
        if context_manager:
            await client.__aenter__()  # what `async with` would do, held open for the app's life
            tools.extend(client.get_tools())
        else:
            tools.extend(await client.get_tools())

    async def request() -> None:
        out["answer"] = str(await tools[0].ainvoke({"a": 2, "b": 3}))

    async def shutdown() -> None:
        if context_manager:
            await client.__aexit__(None, None, None)

    await asyncio.create_task(startup(), name="startup")
    await asyncio.create_task(request(), name="request")
    try:
        await asyncio.create_task(shutdown(), name="shutdown")
    except BaseException as exc:
        out["errors"] += leaves(exc)


def main() -> int:
    args = command_line(__doc__).parse_args()
    if args.command == "serve":
        serve_add("verify-langchain")
        return 0
    trace()
    out: dict[str, Any] = {"errors": []}
    asyncio.run(app(out))
    return finish(out, answer_has="5")


if __name__ == "__main__":
    sys.exit(main())
