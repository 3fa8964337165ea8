"""pytest-asyncio: async-generator fixtures that hold an anyio cancel scope across ``yield``
(pytest-dev/pytest-asyncio#1191: no fixed release; remedy: anyio's plugin or an owner task).

pytest-asyncio runs a fixture's setup (up to ``yield``) and its teardown as two
separate ``Runner.run()`` calls, i.e. two asyncio tasks: a task group,
``move_on_after``, or a client whose ``__aenter__`` opens one, held across
``yield``, is entered by the setup task and exited by the teardown task.  Each
test passes; its teardown errors.  ``test_owner_task`` is the remedy (an owner
task enters and exits the group): clean.

Run by compat/verify_culprits.py as ``pytest --scopetrace`` (jsonl exporter).
Deterministic: no sleeps, only events and checkpoints.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest
import pytest_asyncio
from _driver import probe_session, worker_client


@pytest_asyncio.fixture
async def task_group():
    async with anyio.create_task_group() as tg:
        yield tg


@pytest_asyncio.fixture
async def deadline():
    with anyio.move_on_after(3600) as scope:
        yield scope


@pytest_asyncio.fixture
async def http_client():
    async with worker_client() as client:
        yield client


@pytest_asyncio.fixture
async def mcp_session():
    async with probe_session() as session:
        yield session


@pytest_asyncio.fixture
async def owned_task_group():
    """The remedy: one owner task enters and exits the group."""
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def owner() -> None:
        async with anyio.create_task_group() as tg:
            ready.set_result(tg)
            await stop.wait()

    task = asyncio.create_task(owner(), name="fixture-owner")
    tg = await ready
    yield tg
    stop.set()
    await task


@pytest.mark.asyncio
async def test_task_group(task_group):
    task_group.start_soon(anyio.lowlevel.checkpoint)


@pytest.mark.asyncio
async def test_deadline(deadline):
    assert not deadline.cancel_called


@pytest.mark.asyncio
async def test_http_client(http_client):
    assert (await http_client.get("/")).text == "ok"


@pytest.mark.asyncio
async def test_mcp_session(mcp_session):
    result = await mcp_session.call_tool("echo", {"text": "hi"})
    assert not result.isError


@pytest.mark.asyncio
async def test_owner_task(owned_task_group):
    owned_task_group.start_soon(anyio.lowlevel.checkpoint)
