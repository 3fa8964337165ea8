"""The culprit's rules on the stacks of real libraries (the "Name the culprit" issue).

Each case is the non-plumbing part of stacks recorded on the real library at
its affected release (compat/verify_culprits.py runs the libraries
themselves); here they are laid out as frames, so every rule of
``_culprit`` is pinned down in the fast suite and its docstring's claims
can fail.  Frames are innermost first, as recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import anyio

from scopetrace import _culprit
from scopetrace._report import Fixture
from scopetrace._stacks import CO_ASYNC_GENERATOR, CO_COROUTINE, Frame

SITE = "/venv/lib/python3.11/site-packages/"
#: The real standard library's files: scopetrace knows them by path.
CONTEXTLIB = contextlib.__file__
ASYNCIO_TASKS = asyncio.tasks.__file__


def package(frame: Frame) -> str:
    if frame.filename.startswith(SITE):
        return frame.filename[len(SITE):].split("/", 1)[0]
    return ""


ANYIO = os.path.dirname(anyio.__file__)


def f(path: str, line: int, function: str, gen: bool = False, first: int | None = None) -> Frame:
    """A frame; ``path`` relative to site-packages, or ``app/...`` for the
    application; anyio's files are the real ones (scopetrace knows them by path)."""
    if path.startswith("anyio/"):
        filename = os.path.join(ANYIO, path.removeprefix("anyio/"))
    else:
        filename = path if path.startswith(("/", "app/")) else SITE + path
    flags = CO_ASYNC_GENERATOR if gen else CO_COROUTINE
    return Frame(filename, line, function, first if first is not None else hash(function) % 997, flags)


#: contextlib's frames around a generator-based context manager.
CM_ENTER = Frame(CONTEXTLIB, 210, "_AsyncGeneratorContextManager.__aenter__", 205)
CM_EXIT = Frame(CONTEXTLIB, 217, "_AsyncGeneratorContextManager.__aexit__", 214)
STACK_ENTER = Frame(CONTEXTLIB, 650, "AsyncExitStack.enter_async_context", 640)
STACK_EXIT = Frame(CONTEXTLIB, 728, "AsyncExitStack.__aexit__", 700)


def culprit(opener: list[Frame], closer: list[Frame] | None = None, **kw: object) -> str:
    found = _culprit.find(tuple(opener), tuple(closer) if closer is not None else None,
                          package_of=package, **kw)  # type: ignore[arg-type]
    assert found is not None
    name = found.frame.filename.removeprefix(SITE)
    if name.startswith(ANYIO):
        name = "anyio" + name.removeprefix(ANYIO)
    return f"{name}:{found.frame.lineno} in {found.frame.function}"


def test_fastmcp_client_shared_by_two_tasks() -> None:
    """fastmcp 2.5.2: the culprit is Client.__aenter__, the file fix #635 changed,
    not mcp's BaseSession (used correctly) nor the transports' CM generators."""
    opener = [
        f("mcp/shared/session.py", 208, "BaseSession.__aenter__"),
        f("mcp/client/streamable_http.py", 464, "streamablehttp_client", gen=True), CM_ENTER,
        f("fastmcp/client/transports.py", 219, "StreamableHttpTransport.connect_session", gen=True),
        CM_ENTER,
        f("fastmcp/client/client.py", 226, "Client._context_manager", gen=True), CM_ENTER,
        STACK_ENTER, f("fastmcp/client/client.py", 250, "Client.__aenter__"),
        f("app/driver.py", 135, "task_a"),
    ]
    closer = [
        f("mcp/shared/session.py", 223, "BaseSession.__aexit__"),
        f("mcp/client/streamable_http.py", 464, "streamablehttp_client", gen=True), CM_EXIT,
        f("fastmcp/client/transports.py", 219, "StreamableHttpTransport.connect_session", gen=True),
        CM_EXIT,
        f("fastmcp/client/client.py", 226, "Client._context_manager", gen=True), CM_EXIT,
        STACK_EXIT, f("fastmcp/client/client.py", 265, "Client.__aexit__"),
        f("app/driver.py", 145, "task_b"),
    ]
    assert culprit(opener, closer) == "fastmcp/client/client.py:250 in Client.__aenter__"


def test_pydantic_ai_mcp_server_shared_by_two_runs() -> None:
    """pydantic-ai 1.20.0: MCPServer.__aenter__ (fix #4514), not the outer,
    per-run CombinedToolset, nor mcp."""
    opener = [
        f("mcp/shared/session.py", 205, "BaseSession.__aenter__"), STACK_ENTER,
        f("pydantic_ai/mcp.py", 335, "MCPServer.__aenter__"), STACK_ENTER,
        f("pydantic_ai/toolsets/combined.py", 51, "CombinedToolset.__aenter__"),
        f("pydantic_ai/agent/__init__.py", 656, "Agent.iter", gen=True), CM_ENTER,
        f("app/driver.py", 60, "run_a"),
    ]
    closer = [
        f("mcp/shared/session.py", 220, "BaseSession.__aexit__"), STACK_EXIT,
        f("pydantic_ai/mcp.py", 353, "MCPServer.__aexit__"), STACK_EXIT,
        f("pydantic_ai/toolsets/combined.py", 60, "CombinedToolset.__aexit__"),
        f("pydantic_ai/agent/__init__.py", 656, "Agent.iter", gen=True), CM_EXIT,
        f("app/driver.py", 70, "run_b"),
    ]
    assert culprit(opener, closer) == "pydantic_ai/mcp.py:335 in MCPServer.__aenter__"


def test_openai_agents_connect_and_cleanup_in_two_tasks() -> None:
    owner = "_MCPServerWithClientSession"
    opener = [f("mcp/shared/session.py", 223, "BaseSession.__aenter__"), STACK_ENTER,
              f("agents/mcp/server.py", 1395, f"{owner}.connect"), f("app/app.py", 10, "setup")]
    closer = [f("mcp/shared/session.py", 238, "BaseSession.__aexit__"), STACK_EXIT,
              f("agents/mcp/server.py", 1841, f"{owner}.cleanup"), f("app/app.py", 20, "teardown")]
    assert culprit(opener, closer) == f"agents/mcp/server.py:1395 in {owner}.connect"


def test_the_applications_own_connect_and_cleanup() -> None:
    """The user mistake with the mcp SDK: the culprit is the application's code."""
    opener = [f("mcp/shared/session.py", 223, "BaseSession.__aenter__"), STACK_ENTER,
              f("app/client.py", 79, "ToolClient.connect"), f("app/main.py", 30, "start")]
    closer = [f("mcp/shared/session.py", 238, "BaseSession.__aexit__"), STACK_EXIT,
              f("app/client.py", 90, "ToolClient.cleanup"), f("app/main.py", 40, "stop")]
    assert culprit(opener, closer) == "app/client.py:79 in ToolClient.connect"


def test_a_ref_counted_connection_used_with_async_with_by_each_task(tmp_path) -> None:
    """Each side used the context manager in a with block of its own (read from
    the source): the context manager carried the scope, not its callers."""
    source = tmp_path / "calls.py"
    source.write_text("async def a(conn):\n    async with conn:\n        pass\n\n"
                      "async def b(conn):\n    async with conn:\n        pass\n")
    path = str(source)
    opener = [f("pydantic_ai/mcp.py", 12, "MCPServer.__aenter__"), f(path, 2, "a")]
    closer = [f("pydantic_ai/mcp.py", 19, "MCPServer.__aexit__"), f(path, 6, "b")]
    assert culprit(opener, closer) == "pydantic_ai/mcp.py:12 in MCPServer.__aenter__"


def test_claude_agent_sdk_splits_its_own_task_group() -> None:
    """The library delegated itself (Query.start/close) and nothing outside breaks."""
    opener = [f("claude_agent_sdk/_internal/query.py", 170, "Query.start"),
              f("claude_agent_sdk/_internal/client.py", 120, "process_query", gen=True),
              f("claude_agent_sdk/query.py", 90, "query", gen=True), f("app/main.py", 12, "main")]
    closer = [f("claude_agent_sdk/_internal/query.py", 666, "Query.close"),
              f("claude_agent_sdk/_internal/client.py", 145, "process_query", gen=True)]
    assert culprit(opener, closer) == "claude_agent_sdk/_internal/query.py:170 in Query.start"


def test_a_shared_connection_of_the_application() -> None:
    """pydantic-ai #2355 in miniature: both tasks run tool_call; the connection is it."""
    opener = [f("app/conn.py", 68, "RefCounted.__aenter__"), f("app/calls.py", 85, "tool_call")]
    closer = [f("app/conn.py", 76, "RefCounted.__aexit__"), f("app/calls.py", 85, "tool_call")]
    assert culprit(opener, closer) == "app/conn.py:68 in RefCounted.__aenter__"


def test_an_async_generator_abandoned_by_its_consumer() -> None:
    """Closed by the loop's finalizer: culpable where it was dropped."""
    opener = [f("app/gen.py", 30, "stream", gen=True), f("app/gen.py", 38, "consume")]
    closer = [f("app/gen.py", 30, "stream", gen=True)]
    assert culprit(opener, closer) == "app/gen.py:38 in consume"


def test_a_fixture_under_pytest_asyncio() -> None:
    """pytest-asyncio runs setup and teardown in two tasks by design (its frames
    are left out): the fixture is the culprit, not httpx's client inside it,
    which one async with in the resumed fixture frame nested correctly."""
    runner_setup = f("pytest_asyncio/plugin.py", 410, "_wrap.<locals>.setup")
    runner_teardown = f("pytest_asyncio/plugin.py", 423, "_wrap.<locals>.finalizer.<locals>.fin")
    fixture = f("app/test_x.py", 66, "http_client", gen=True)
    opener = [f("app/test_x.py", 39, "WorkerTransport.__aenter__"),
              f("httpx/_client.py", 2002, "AsyncClient.__aenter__"), fixture, runner_setup]
    closer = [f("app/test_x.py", 46, "WorkerTransport.__aexit__"),
              f("httpx/_client.py", 2016, "AsyncClient.__aexit__"), fixture, runner_teardown]
    found = culprit(opener, closer, fixture=Fixture("http_client", "pytest-asyncio"))
    assert found == "app/test_x.py:66 in http_client"
    # The orphan warning of the setup task, from its stack alone: the same.
    assert culprit(opener) == "app/test_x.py:66 in http_client"


def test_anyio_4_14_0s_test_runner() -> None:
    """agronholm/anyio#1179: anyio's runner promises one task; here it is at fault."""
    runner = f("anyio/_backends/_asyncio.py", 2303, "TestRunner._run_tests_and_fixtures")
    fixture = f("app/test_x.py", 39, "background_service", gen=True)
    found = culprit([fixture, runner], [fixture, runner])
    assert found == "anyio/_backends/_asyncio.py:2303 in TestRunner._run_tests_and_fixtures"


def test_never_anyio_asyncio_trio_or_contextlib() -> None:
    opener = [f("anyio/_backends/_asyncio.py", 821, "TaskGroup.__aenter__"),
              f("app/a.py", 5, "open_it"), Frame(ASYNCIO_TASKS, 300, "step", 1, 0)]
    closer = [f("anyio/_backends/_asyncio.py", 877, "TaskGroup.__aexit__"),
              f("app/b.py", 9, "close_it")]
    assert culprit(opener, closer) == "app/a.py:5 in open_it"


def test_the_scope_in_the_way_was_left_open_by_an_abandoned_generator() -> None:
    """not_innermost: the generator's move_on_after is still open; its stack decides."""
    blocker = [f("anyio/_core/_tasks.py", 149, "fail_at"), CM_ENTER,
               f("app/gen.py", 10, "ticks", gen=True), f("app/gen.py", 20, "consumer")]
    opener = [f("app/gen.py", 18, "consumer")]
    closer = [f("app/gen.py", 25, "consumer")]
    assert culprit(opener, closer, blocker=blocker) == "app/gen.py:20 in consumer"


def test_the_scope_in_the_way_is_a_with_block_still_running() -> None:
    """The exit happens inside a with block entered later: the exit is misplaced."""
    blocker = [f("anyio/_core/_tasks.py", 149, "fail_at"), CM_ENTER,
               f("app/demo.py", 159, "call_in_timeout", first=150)]
    opener = [f("app/conn.py", 112, "Shared.__aenter__"), f("app/demo.py", 158, "call_in_timeout", first=150)]
    closer = [f("app/conn.py", 120, "Shared.__aexit__"), f("app/demo.py", 161, "call_in_timeout", first=150)]
    found = culprit(opener, closer, blocker=blocker, same_task=True)
    assert found == "app/conn.py:112 in Shared.__aenter__"


def test_a_task_group_child_that_leaked_a_scope() -> None:
    """anyio >= 4.14's wrapper scope is anyio's: the child's leaked scope decides."""
    blocker = [f("app/child.py", 53, "leaky_child"), f("anyio/_core/_tasks.py", 327, "TaskHandle._run_coro")]
    opener = [f("anyio/_core/_tasks.py", 325, "TaskHandle._run_coro")]
    closer = [f("anyio/_core/_tasks.py", 325, "TaskHandle._run_coro")]
    assert culprit(opener, closer, blocker=blocker, same_task=True) == "app/child.py:53 in leaky_child"


def test_an_orphan_of_a_library_used_without_a_with_block() -> None:
    """One stack: the first frame outside the library, past its CM generators."""
    opener = [f("mcp/shared/session.py", 208, "BaseSession.__aenter__"),
              f("mcp/client/stdio/__init__.py", 182, "stdio_client", gen=True), CM_ENTER,
              f("fastmcp/client/client.py", 226, "Client._context_manager", gen=True), CM_ENTER,
              STACK_ENTER, f("fastmcp/client/client.py", 250, "Client.__aenter__"),
              f("app/driver.py", 135, "task_a")]
    assert culprit(opener) == "fastmcp/client/client.py:250 in Client.__aenter__"


def test_one_client_shared_by_two_runs_of_a_request_handler() -> None:
    """fastmcp's FastMCPProxy: two runs of one coroutine each `async with` the
    same Client (the same frames at the same line: two calls, not one frame)."""
    handler_a = f("fastmcp/server/proxy.py", 254, "FastMCPProxy._mcp_call_tool")
    handler_b = f("fastmcp/server/proxy.py", 254, "FastMCPProxy._mcp_call_tool")
    opener = [f("mcp/shared/session.py", 208, "BaseSession.__aenter__"), STACK_ENTER,
              f("fastmcp/client/client.py", 250, "Client.__aenter__"), handler_a]
    closer = [f("mcp/shared/session.py", 223, "BaseSession.__aexit__"), STACK_EXIT,
              f("fastmcp/client/client.py", 265, "Client.__aexit__"), handler_b]
    assert culprit(opener, closer) == "fastmcp/client/client.py:250 in Client.__aenter__"


def test_a_library_that_closes_in_a_task_it_started() -> None:
    """mcp's ClientSessionGroup closes a session's exit stack in a child task:
    the closing stack is only the session's exit; the group's method that
    entered it is the culprit, not the session (a context manager's halves)."""
    opener = [f("mcp/shared/session.py", 223, "BaseSession.__aenter__"), STACK_ENTER,
              f("mcp/client/session_group.py", 330, "ClientSessionGroup._establish_session"),
              f("mcp/client/session_group.py", 289, "ClientSessionGroup.connect_to_server"),
              f("app/main.py", 77, "external_stack")]
    closer = [f("mcp/shared/session.py", 238, "BaseSession.__aexit__"), STACK_EXIT]
    found = culprit(opener, closer)
    assert found == "mcp/client/session_group.py:330 in ClientSessionGroup._establish_session"


def test_a_misnested_library_scope_in_one_task_is_not_called_another_task() -> None:
    """Regression: two MCP sessions in one task, the first cleaned up first
    (python-sdk#577) -- the scope in the way's reason said it was "not exited
    in the task that entered it", although one task entered and exited both."""
    blocker = [f("mcp/shared/session.py", 223, "BaseSession.__aenter__"),
               f("app/client.py", 51, "ToolClient.connect"), f("app/main.py", 20, "main")]
    opener = [f("mcp/shared/session.py", 223, "BaseSession.__aenter__"),
              f("app/client.py", 51, "ToolClient.connect"), f("app/main.py", 19, "main")]
    closer = [f("mcp/shared/session.py", 230, "BaseSession.__aexit__"),
              f("app/client.py", 60, "ToolClient.cleanup"), f("app/main.py", 22, "main")]
    assert culprit(opener, closer, blocker=blocker, same_task=True) == (
        "app/client.py:51 in ToolClient.connect"
    )
    found = _culprit.find(tuple(opener), tuple(closer), blocker=tuple(blocker), same_task=True,
                          package_of=package)
    assert found is not None
    assert "in the task that entered it" not in found.reason
    assert found.reason.endswith("did not exit it before the scope outside it was exited")


def test_a_misnest_in_the_application_alone_is_not_called_another_task() -> None:
    """Regression: when the scope in the way was entered by the application's
    own code (no library frame to blame), the fallback reason still said it
    was "not exited in the same task", in a report naming one task."""
    blocker = [f("app/helpers.py", 12, "open_scope"), f("app/main.py", 30, "main")]
    opener = [f("app/main.py", 29, "main")]
    closer = [f("app/main.py", 31, "main")]
    found = _culprit.find(tuple(opener), tuple(closer), blocker=tuple(blocker), same_task=True,
                          package_of=package)
    assert found is not None
    assert culprit(opener, closer, blocker=blocker, same_task=True) == "app/helpers.py:12 in open_scope"
    assert "same task" not in found.reason
    assert found.reason.endswith("did not exit it before the scope outside it was exited")
