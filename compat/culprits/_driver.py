"""What the drivers of compat/culprits/ share: tracing, their MCP servers, and
collecting and printing what the application saw.

compat/verify_culprits.py copies this file next to every driver in a run's work
directory, so ``import _driver`` finds it however the driver runs: a plain
driver as ``python driver.py`` (its folder is ``sys.path[0]``), a test-runner
driver as ``pytest driver.py`` with the work directory as rootdir (pytest's
default "prepend" import mode puts the test file's folder on ``sys.path``), and
a driver's server subprocess (``driver.py serve``) like the plain driver.

Only the standard library is imported up here: each driver's venv holds other
packages (``httpx``, ``mcp``, ``uvicorn`` ... are imported where they are used),
and three drivers import this before ``scopetrace.install()`` and anyio.

The code that splits a scope across tasks -- the bug each driver reproduces, the
culprit verify_culprits.py expects in the driver's file -- stays in the driver.
What is here is either not on the stacks of a report at all (servers in other
processes, result printing), or below the frame that is blamed
(``worker_client``'s transport, entered by a fixture of the driver).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# -- command line, tracing and results -----------------------------------------------


def command_line(doc: str, shapes: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The command line of a driver with a server: ``driver.py [run]`` reproduces
    the bug, ``driver.py serve`` is the server it starts as its own subprocess;
    ``--shape`` (when ``shapes`` are given; default the first) picks the variant
    verify_culprits.py runs: the bug, or its remedy.  Add more before parsing."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("run", "serve"), default="run")
    if shapes:
        parser.add_argument("--shape", choices=shapes, default=shapes[0])
    return parser


def trace() -> None:
    """Install scopetrace the way verify_culprits.py reads it back: the jsonl
    exporter at ``$VERIFY_CULPRITS_JSONL``, deep stacks (the culprit is often far
    from the scope), no rate limit (every report is counted)."""
    import scopetrace

    scopetrace.install(exporter="jsonl", jsonl_path=os.environ["VERIFY_CULPRITS_JSONL"],
                       stack_depth=64, rate_limit=0)


def clean_env() -> dict[str, str]:
    """This environment without ``SCOPETRACE*``, for a server subprocess: only the
    driver's own process is traced, the server is the test's scenery."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}


def leaves(exc: BaseException) -> list[str]:
    """The leaves of a (nested) exception group, ``Type: first line`` each: anyio
    wraps its cancel-scope error in groups, and verify_culprits.py looks for the
    error's own words in what the application saw."""
    inner = getattr(exc, "exceptions", None)  # an exception group
    if isinstance(inner, tuple):
        return [s for e in inner for s in leaves(e)]
    return [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]


def gathered(results: Iterable[object]) -> dict[str, Any]:
    """What two concurrent tasks saw, from ``asyncio.gather(..., return_exceptions=True)``:
    the errors they ended with (their leaves) and the answers they returned."""
    results = list(results)
    return {
        "errors": [s for r in results if isinstance(r, BaseException) for s in leaves(r)],
        "answers": [r for r in results if isinstance(r, str)],
    }


class LogHits(logging.Handler):
    """The log records ``pick`` accepts (their message, plus the exception's text
    with ``with_exception``), each prefixed with ``prefix``.  Some releases log
    anyio's refusal to exit a scope instead of raising it: verify_culprits.py
    checks every cancel-scope error the application saw, raised or logged."""

    def __init__(self, pick: Callable[[str], bool], *, with_exception: bool = False,
                 prefix: str = "") -> None:
        super().__init__(logging.DEBUG)
        self.pick = pick
        self.with_exception = with_exception
        self.prefix = prefix
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if self.with_exception and record.exc_info and record.exc_info[1] is not None:
            text += f" | {record.exc_info[1]}"
        if self.pick(text):
            self.hits.append(self.prefix + text)


def finish(out: dict[str, Any], *, logged: list[str] | None = None, answer_has: str | None = None) -> int:
    """Flush scopetrace (the jsonl file is complete when the driver ends), then
    print ``RESULT <json>``: the last such line of stdout is what
    verify_culprits.py takes as what the application saw (``errors``, ...).

    ``logged``: a ``LogHits.hits`` list, added to ``errors`` after the flush.
    Returns the exit status: 1 when ``answer_has`` is given and not in
    ``out["answer"]`` (the driver's own work failed, whatever was reported).
    """
    import scopetrace

    scopetrace.flush()
    if logged is not None:
        out["errors"] += logged
    print("RESULT " + json.dumps(out, default=str), flush=True)
    if answer_has is None:
        return 0
    return 0 if answer_has in json.dumps(out.get("answer"), default=str) else 1


# -- MCP servers -------------------------------------------------------------------------


def serve_add(name: str) -> None:
    """The stdio MCP server the MCP-client drivers start as ``driver.py serve``:
    one tool, ``add(a, b)``.  ``FastMCP`` on mcp 1.x, ``MCPServer`` (its new
    name) on mcp 2.x."""
    try:
        from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x
    except ImportError:
        from mcp.server import MCPServer as Server  # mcp 2.x

    server = Server(name)

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    server.run()


def serve_http(app: Any) -> None:
    """Serve an ASGI app (an MCP server's streamable HTTP app) with uvicorn on a
    free port of 127.0.0.1, print ``PORT <n>`` once it accepts connections, and
    stop when stdin closes: the parent (``HttpServer``) closes it to stop the
    server -- no fixed port, no signals, no orphan when the parent dies."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
        server.should_exit = True
        await serving

    asyncio.run(main())


class HttpServer:
    """``script serve`` (a driver whose ``serve`` calls ``serve_http``) as an
    untraced subprocess for the length of a ``with`` block, which gets the
    server's URL: ``http://127.0.0.1:<port><path>``."""

    def __init__(self, script: Path, path: str) -> None:
        self.script = script
        self.path = path

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=clean_env(), text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"MCP server did not start: {line!r}")
        return f"http://127.0.0.1:{int(line.split()[1])}{self.path}"

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- what the fixture drivers' fixtures hold ----------------------------------------------


def worker_client() -> Any:
    """An ``httpx.AsyncClient`` whose transport's ``__aenter__`` starts a worker
    in an anyio task group, exited in ``__aexit__``: a client that holds a cancel
    scope from ``__aenter__`` to ``__aexit__`` as real transports do, with no
    network (every request gets 200 "ok").  The fixture that enters it is the
    culprit when its setup and teardown run in two tasks."""
    import anyio
    import anyio.abc
    import httpx

    class WorkerTransport(httpx.AsyncBaseTransport):
        """An httpx transport whose ``__aenter__`` starts a worker in a task group."""

        def __init__(self) -> None:
            self._stop = anyio.Event()
            self._tg: anyio.abc.TaskGroup | None = None

        async def _worker(self) -> None:
            await self._stop.wait()

        async def __aenter__(self) -> WorkerTransport:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg.start_soon(self._worker)
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            self._stop.set()
            assert self._tg is not None
            await self._tg.__aexit__(*exc_info)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, text="ok")

    return httpx.AsyncClient(transport=WorkerTransport(), base_url="http://test")


def probe_session() -> Any:
    """An in-memory MCP client session to a server with one tool, ``echo(text)``,
    as an async context manager (enter it where the fixture under test stands):
    the session and its server hold task groups from enter to exit."""
    from mcp.server.fastmcp import FastMCP
    from mcp.shared.memory import create_connected_server_and_client_session

    server = FastMCP("probe")

    @server.tool()
    def echo(text: str) -> str:
        return text

    return create_connected_server_and_client_session(server)
