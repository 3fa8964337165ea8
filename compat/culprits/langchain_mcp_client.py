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

import argparse
import asyncio
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def trace() -> None:
    import scopetrace

    scopetrace.install(exporter="jsonl", jsonl_path=os.environ["VERIFY_CULPRITS_JSONL"],
                       stack_depth=64, rate_limit=0)


def serve() -> None:
    from mcp.server.fastmcp import FastMCP

    server = FastMCP("verify-langchain")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    server.run()


def _leaves(exc: BaseException) -> list[str]:
    inner = getattr(exc, "exceptions", None)  # an exception group
    if isinstance(inner, tuple):
        return [s for e in inner for s in _leaves(e)]
    return [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]


async def app(out: dict[str, Any]) -> None:
    from langchain_mcp_adapters.client import MultiServerMCPClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}
    client = MultiServerMCPClient({
        "math": {"command": sys.executable, "args": [str(HERE), "serve"], "env": env, "transport": "stdio"},
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
        out["errors"] += _leaves(exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("run", "serve"), default="run")
    args = parser.parse_args()
    if args.command == "serve":
        serve()
        return 0
    trace()
    out: dict[str, Any] = {"errors": []}
    asyncio.run(app(out))
    import scopetrace

    scopetrace.flush()
    print("RESULT " + json.dumps(out, default=str), flush=True)
    return 0 if "5" in json.dumps(out.get("answer"), default=str) else 1


if __name__ == "__main__":
    sys.exit(main())
