"""The fixed pattern for test_pytest_asyncio_fixtures.py: the same fixtures under anyio's
own pytest plugin, which runs a test and its async fixtures -- setup and teardown
alike -- in one runner task (the remedy for pytest-dev/pytest-asyncio#1191).

Run by compat/verify_culprits.py as ``pytest --scopetrace``: nothing may be reported.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from _driver import probe_session, worker_client

pytestmark = pytest.mark.anyio


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
    async with worker_client() as client:
        yield client


@pytest.fixture
async def mcp_session():
    async with probe_session() as session:
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
