"""openai-agents MCP servers: ``connect()`` in one task, ``cleanup()`` in another
(openai/openai-agents-python#2005, #1393; no fix on mcp < 2, remedy: one owner task).

    python openai_agents_split.py                  # MCPServerStdio: connect + run in task 1, cleanup in task 2
    python openai_agents_split.py --shape manager  # the remedy: MCPServerManager(connect_in_parallel=True)
    python openai_agents_split.py serve            # the stdio MCP server (used by the above)

``_MCPServerWithClientSession.connect()`` enters the transport (``stdio_client``)
and ``ClientSession`` into ``self.exit_stack``; ``cleanup()`` closes that stack.
Both hold anyio task groups, so the two calls must run in one task.  With mcp >= 2,
openai-agents >= 0.20.0 runs the client in a task of its own (clean).  Recent
releases log the refused exit at DEBUG and go on; this driver listens to the
``openai.agents`` logger for it.  The model is scripted (no LLM, no network).

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from _driver import LogHits, clean_env, command_line, finish, serve_add, trace

HERE = Path(__file__).resolve()
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")


def scripted_model():
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    class ScriptedModel(Model):
        """Turn 1: call the MCP tool ``add``; turn 2: answer with its output."""

        async def get_response(self, system_instructions, input, model_settings, tools,  # noqa: A002 (the interface)
                               output_schema, handoffs, tracing, **kwargs: Any) -> ModelResponse:
            items = input if isinstance(input, list) else []
            outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
            if outputs:
                item: Any = ResponseOutputMessage(
                    id="msg_1", type="message", role="assistant", status="completed",
                    content=[ResponseOutputText(type="output_text", text=f"sum={outputs[-1].get('output')}",
                                                annotations=[])],
                )
            else:
                item = ResponseFunctionToolCall(id="fc_1", call_id="call_1", type="function_call",
                                                name="add", arguments='{"a": 2, "b": 3}')
            return ModelResponse(output=[item], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any):
            raise NotImplementedError

    return ScriptedModel()


async def run_agent(server) -> str:
    from agents import Agent, Runner

    agent = Agent(name="probe", instructions="add", mcp_servers=[server], model=scripted_model())
    result = await Runner.run(agent, "what is 2 + 3?")
    return str(result.final_output)


async def split(server, out: dict[str, Any]) -> None:
    """Task 1 connects and runs the agent; task 2 cleans up (a notebook's cells,
    or a request handler and its background task)."""

    async def setup() -> None:
        await server.connect()
        out["answer"] = await run_agent(server)

    async def teardown() -> None:
        await server.cleanup()

    await asyncio.create_task(setup(), name="setup-task")
    try:
        await asyncio.create_task(teardown(), name="cleanup-task")
    except Exception as exc:  # older releases raise; recent ones log at DEBUG
        out["errors"].append(f"{type(exc).__name__}: {exc}")


async def manager(server, out: dict[str, Any]) -> None:
    """The remedy (openai-agents >= 0.7.0): one worker task per server runs
    connect() and cleanup(), whichever task asks."""
    from agents.mcp import MCPServerManager

    mgr = MCPServerManager([server], connect_in_parallel=True)

    async def setup() -> None:
        await mgr.connect_all()
        out["answer"] = await run_agent(server)

    async def teardown() -> None:
        await mgr.cleanup_all()

    await asyncio.create_task(setup(), name="setup-task")
    await asyncio.create_task(teardown(), name="cleanup-task")


def main() -> int:
    args = command_line(__doc__, shapes=("split", "manager")).parse_args()
    if args.command == "serve":
        serve_add("verify-culprits-agents")
        return 0
    trace()
    # recent releases log the refused exit at DEBUG instead of raising it
    seen = LogHits(lambda text: "cancel scope" in text, with_exception=True)
    logging.getLogger("openai.agents").addHandler(seen)
    logging.getLogger("openai.agents").setLevel(logging.DEBUG)

    from agents.mcp import MCPServerStdio

    server = MCPServerStdio(
        params={"command": sys.executable, "args": [str(HERE), "serve"], "env": clean_env()},
        name="verify-stdio",
    )
    out: dict[str, Any] = {"errors": []}
    asyncio.run({"split": split, "manager": manager}[args.shape](server, out))
    return finish(out, logged=seen.hits, answer_has="5")


if __name__ == "__main__":
    sys.exit(main())
