"""The pydantic-ai entry of the known-bug advisor, against the real library.

A real MCP server (``compat/verify_pydantic_ai.py serve``: FastMCP, streamable
HTTP, 127.0.0.1) and two concurrent agent runs sharing one
``MCPServerStreamableHTTP``; each run's ``FunctionModel`` (no LLM) asks for
four parallel tool calls.  The runs are ordered by events, not timing: run A
enters the server first (opening its transport's cancel scope), run B enters
while A is inside, A finishes first, and B is the last to leave.  Before
pydantic-ai 1.92.0 the last to leave closes A's scope from B's task.

``compat/verify_pydantic_ai.py`` runs this file in a venv with 1.20.0 (expects
the violation and the advice) and one with 1.92.0 (expects none).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pydantic_ai = pytest.importorskip(
    "pydantic_ai.mcp",
    reason="pydantic-ai-slim[mcp] is not installed: run compat/verify_pydantic_ai.py",
)

from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.mcp import MCPServerStreamableHTTP  # noqa: E402
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart  # noqa: E402
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402

import scopetrace  # noqa: E402
from scopetrace import semconv  # noqa: E402
from scopetrace._advisor import version_key  # noqa: E402
from scopetrace._packages import version_of  # noqa: E402

from .conftest import Reports

pytestmark = pytest.mark.slow

SERVER = Path(__file__).resolve().parent.parent / "compat" / "verify_pydantic_ai.py"
TOOLS = ("probe_a", "probe_b", "probe_c", "probe_d")


@pytest.fixture
def mcp_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"MCP server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _model(name: str, entered: asyncio.Event, may_finish: asyncio.Event | None) -> FunctionModel:
    async def respond(messages: list[Any], info: AgentInfo) -> ModelResponse:
        returned = [
            p for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)
        ]
        if not returned:
            entered.set()
            return ModelResponse(
                parts=[
                    ToolCallPart(tool_name=tool, args={"tag": name}, tool_call_id=f"{name}-{tool}")
                    for tool in TOOLS
                ]
            )
        assert sorted(str(p.content) for p in returned) == [f"{t}:{name}" for t in TOOLS]
        if may_finish is not None:
            await may_finish.wait()
        return ModelResponse(parts=[TextPart(f"{name} done")])

    return FunctionModel(respond)


async def _two_runs(url: str) -> list[Any]:
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

    return await asyncio.gather(run_a(), run_b(), return_exceptions=True)


def test_pydantic_ai_parallel_tool_calls(traced: Any, mcp_url: str) -> None:
    seen = Reports(violations_only=True)
    from scopetrace._install import current_runtime

    runtime = current_runtime()
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)

    results = asyncio.run(_two_runs(mcp_url))

    version = version_of(("pydantic-ai-slim", "pydantic-ai"))
    assert version is not None
    spans = traced.finished(semconv.VIOLATION_SPAN)
    if version_key(version) < version_key("1.92.0"):
        # B, the last to leave, closes the transport scopes A's task entered.
        assert isinstance(results[1], RuntimeError)
        assert "different task" in str(results[1])
        wrong = [v for v in seen if v.kind == semconv.KIND_WRONG_TASK]
        assert wrong, f"no violation on affected pydantic-ai {version}: {results!r}"
        advice = (
            f"pydantic-ai {version} is affected by pydantic/pydantic-ai#2355, "
            "fixed in 1.92.0 (pydantic/pydantic-ai#4514): upgrade to pydantic-ai>=1.92.0 "
            "(raise your pin or floor if you have one)"
        )
        for violation in wrong:
            assert violation.advice == advice
            assert f"advice:     {advice}" in violation.format()
            assert "pydantic_ai/mcp.py" in violation.closer.stacktrace
            # The code to fix is pydantic-ai's, not the mcp SDK's it misuses.
            assert violation.culprit is not None
            assert "pydantic_ai/mcp.py" in violation.culprit.site
            assert violation.culprit.package == "pydantic-ai-slim"
        assert advice in [s.attributes.get(semconv.ADVICE) for s in spans]
        # A's own exit then finds those scopes still open inside its graph run:
        # the "isn't the current task's current cancel scope" variant.
        assert isinstance(results[0], RuntimeError)
        assert any(v.kind == semconv.KIND_NOT_INNERMOST for v in seen)
        # A's task ended with the transport scopes open: the early warning,
        # out before B closed them.
        names = [s.name for s in traced.finished()]
        assert semconv.ORPHANED_SPAN in names
        first_wrong = next(
            i for i, s in enumerate(traced.finished())
            if s.name == semconv.VIOLATION_SPAN
            and s.attributes[semconv.VIOLATION_KIND] == semconv.KIND_WRONG_TASK
        )
        assert names.index(semconv.ORPHANED_SPAN) < first_wrong
    else:
        assert results == ["a done", "b done"]
        assert seen == []
        assert spans == []
        assert traced.finished(semconv.ORPHANED_SPAN) == []
