"""agent-framework < 1.0.0rc5: ``MCPTool.connect()`` in one task, ``close()`` in another
(microsoft/agent-framework#4678, also #2846; fixed by #4687 in 1.0.0rc5).

    python agent_framework_mcp_tool.py          # MCPStdioTool: connect in a task, call and close in main
    python agent_framework_mcp_tool.py serve    # the stdio MCP server (used by the above)

Before 1.0.0rc5 ``MCPTool.connect`` entered the transport and ``ClientSession``
into ``self._exit_stack`` in the caller's task; ``close()`` ->
``_safe_close_exit_stack`` acloses it from whichever task closes the tool, and
logs (instead of raising) anyio's "cancel scope" error.  1.0.0rc5 runs the
connection in a lifecycle owner task: the same code is clean.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.  Offline: the server is a stdio subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
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
    from mcp.server.fastmcp import FastMCP

    server = FastMCP("verify-agent-framework")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    server.run()


class Seen(logging.Handler):
    """Every log record that mentions a cancel scope (close() logs instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "cancel scope" in text.lower() or "cancellation" in text.lower():
            self.hits.append(text)


async def split(out: dict[str, Any]) -> None:
    from agent_framework import MCPStdioTool

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}
    tool = MCPStdioTool(name="verify", command=sys.executable, args=[str(HERE), "serve"], env=env,
                        load_prompts=False)
    await asyncio.create_task(tool.connect(), name="connect-task")  # e.g. a startup hook's task
    out["answer"] = await tool.call_tool("add", a=2, b=3)
    try:
        await tool.close()  # the main task: not the one that connected
    except BaseException as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("run", "serve"), default="run")
    args = parser.parse_args()
    if args.command == "serve":
        serve()
        return 0
    trace()
    seen = Seen()
    logging.getLogger().addHandler(seen)
    logging.getLogger("agent_framework").setLevel(logging.DEBUG)
    out: dict[str, Any] = {"errors": []}
    asyncio.run(split(out))
    import scopetrace

    scopetrace.flush()
    out["errors"] += [f"logged: {h}" for h in seen.hits]
    print("RESULT " + json.dumps(out, default=str), flush=True)
    return 0 if "5" in json.dumps(out.get("answer"), default=str) else 1


if __name__ == "__main__":
    sys.exit(main())
