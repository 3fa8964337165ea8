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

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from _driver import LogHits, clean_env, command_line, finish, serve_add, trace

HERE = Path(__file__).resolve()


async def split(out: dict[str, Any]) -> None:
    from agent_framework import MCPStdioTool

    tool = MCPStdioTool(name="verify", command=sys.executable, args=[str(HERE), "serve"], env=clean_env(),
                        load_prompts=False)
    await asyncio.create_task(tool.connect(), name="connect-task")  # e.g. a startup hook's task
    out["answer"] = await tool.call_tool("add", a=2, b=3)
    try:
        await tool.close()  # the main task: not the one that connected
    except BaseException as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}")


def main() -> int:
    args = command_line(__doc__).parse_args()
    if args.command == "serve":
        serve_add("verify-agent-framework")
        return 0
    trace()
    # close() logs anyio's cancel scope error instead of raising it
    seen = LogHits(lambda text: "cancel scope" in text.lower() or "cancellation" in text.lower(),
                   prefix="logged: ")
    logging.getLogger().addHandler(seen)
    logging.getLogger("agent_framework").setLevel(logging.DEBUG)
    out: dict[str, Any] = {"errors": []}
    asyncio.run(split(out))
    return finish(out, logged=seen.hits, answer_has="5")


if __name__ == "__main__":
    sys.exit(main())
