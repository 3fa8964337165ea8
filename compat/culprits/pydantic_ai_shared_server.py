"""pydantic-ai < 1.92.0: one MCP server shared by two concurrent agent runs
(pydantic/pydantic-ai#2355, fixed by #4514 in 1.92.0).

    python pydantic_ai_shared_server.py         # two runs sharing one MCPServerStreamableHTTP
    python pydantic_ai_shared_server.py serve   # the MCP tool server (used by the above)

Before 1.92.0 ``MCPServer.__aenter__`` opened the connection (transport and
``ClientSession`` on ``self._exit_stack``) only when its running count was 0,
and ``MCPServer.__aexit__`` closed it when the count fell back to 0 -- in
whichever task left last.  Ordered by events: run A enters the server (its task
enters the transport's scopes), run B enters while A is inside, A finishes
first (its graph run's exit finds the transport's scopes still open: "isn't the
current tasks's current cancel scope"), B is the last to leave and closes the
scopes A's task entered ("different task").  Each run's ``FunctionModel`` (no
LLM) asks for four parallel tool calls.  1.92.0 runs the session in a task of
its own: both runs succeed.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.  Offline: the server is a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from _driver import HttpServer, command_line, finish, gathered, serve_http, trace

HERE = Path(__file__).resolve()
#: Tool name -> how long it sleeps, in seconds: different, so the calls overlap
#: and finish in an order that is not the order they were made in.
TOOLS = {"probe_a": 0.04, "probe_b": 0.01, "probe_c": 0.03, "probe_d": 0.02}


def serve(server_name: str = "verify-culprits-pai") -> None:
    """The MCP tool server (FastMCP, streamable HTTP, 127.0.0.1); also the one
    compat/verify_pydantic_ai.py serves to tests/test_advisor_pydantic_ai.py."""
    from mcp.server.fastmcp import FastMCP

    mcp = FastMCP(server_name)

    def make_tool(name: str, seconds: float) -> None:
        async def tool(tag: str) -> str:
            await asyncio.sleep(seconds)  # different, so the calls finish out of order
            return f"{name}:{tag}"

        tool.__name__ = name
        mcp.tool(name=name, description=f"sleeps {seconds}s and echoes tag")(tool)

    for name, seconds in TOOLS.items():
        make_tool(name, seconds)
    serve_http(mcp.streamable_http_app())


def _model(name: str, entered: asyncio.Event, may_finish: asyncio.Event | None):
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    async def respond(messages: list[Any], info: AgentInfo) -> ModelResponse:
        returned = [p for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)]
        if not returned:
            entered.set()
            return ModelResponse(parts=[
                ToolCallPart(tool_name=tool, args={"tag": name}, tool_call_id=f"{name}-{tool}") for tool in TOOLS
            ])
        if may_finish is not None:
            await may_finish.wait()
        return ModelResponse(parts=[TextPart(f"{name} done")])

    return FunctionModel(respond)


async def two_runs(url: str) -> list[Any]:
    from pydantic_ai import Agent
    from pydantic_ai.mcp import MCPServerStreamableHTTP

    server = MCPServerStreamableHTTP(url)
    agent = Agent(toolsets=[server])
    a_entered, b_entered, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def run_a() -> Any:
        try:
            return (await agent.run("a", model=_model("a", a_entered, b_entered))).output
        finally:
            a_done.set()

    async def run_b() -> Any:
        await a_entered.wait()
        return (await agent.run("b", model=_model("b", b_entered, a_done))).output

    return await asyncio.gather(asyncio.create_task(run_a(), name="run-A"),
                                asyncio.create_task(run_b(), name="run-B"), return_exceptions=True)


def main() -> int:
    args = command_line(__doc__).parse_args()
    if args.command == "serve":
        serve()
        return 0
    trace()
    with HttpServer(HERE, "/mcp") as url:
        results = asyncio.run(two_runs(url))
    return finish(gathered(results))


if __name__ == "__main__":
    sys.exit(main())
