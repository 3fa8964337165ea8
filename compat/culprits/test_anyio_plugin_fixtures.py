"""The fixed pattern for test_pytest_asyncio_fixtures.py: the same fixtures under anyio's
own pytest plugin, which runs a test and its async fixtures -- setup and teardown
alike -- in one runner task (the remedy for pytest-dev/pytest-asyncio#1191).

Run by compat/verify_culprits.py as ``pytest --scopetrace``: nothing may be reported.
"""

from __future__ import annotations

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest

pytestmark = pytest.mark.anyio


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


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def task_group():
    async with anyio.create_task_group() as tg:
        yield tg


@pytest.fixture
async def deadline():
    with anyio.move_on_after(3600) as scope:
        yield scope


@pytest.fixture
async def http_client():
    async with httpx.AsyncClient(transport=WorkerTransport(), base_url="http://test") as client:
        yield client


@pytest.fixture
async def mcp_session():
    from mcp.server.fastmcp import FastMCP
    from mcp.shared.memory import create_connected_server_and_client_session

    server = FastMCP("probe")

    @server.tool()
    def echo(text: str) -> str:
        return text

    async with create_connected_server_and_client_session(server) as session:
        yield session


async def test_task_group(task_group):
    task_group.start_soon(anyio.lowlevel.checkpoint)


async def test_deadline(deadline):
    assert not deadline.cancel_called


async def test_http_client(http_client):
    assert (await http_client.get("/")).text == "ok"


async def test_mcp_session(mcp_session):
    result = await mcp_session.call_tool("echo", {"text": "hi"})
    assert not result.isError
