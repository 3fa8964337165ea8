"""anyio 4.14.0's pytest plugin: ``pytest.skip()`` in a test breaks a session fixture's
teardown (agronholm/anyio#1179, regression from #1121; fixed by #1180 in 4.14.1).

anyio's plugin runs every async fixture and test of one runner in a single
runner task, so a session-scoped fixture may hold a task group across
``yield``.  On 4.14.0 the asyncio runner treats pytest's ``OutcomeException``
like a KeyboardInterrupt: it cancels the runner task and later starts a new
one.  The fixture's task group stays behind in the dead runner task; its
teardown runs in the new one and anyio refuses the exit, reported against the
teardown of the last test.  On 4.13.0 and >= 4.14.1: 2 passed, 1 skipped.

Run by compat/verify_culprits.py as ``pytest --scopetrace`` (jsonl exporter).
"""

import anyio
import anyio.lowlevel
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
async def background_service(anyio_backend):
    """A session-wide service: a task group with one worker, held across ``yield``."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop.wait)
        yield tg
        stop.set()


async def test_first(background_service):
    await anyio.lowlevel.checkpoint()


async def test_skipped(background_service):
    pytest.skip("pytest.skip() inside an async test")


async def test_last(background_service):
    await anyio.lowlevel.checkpoint()
