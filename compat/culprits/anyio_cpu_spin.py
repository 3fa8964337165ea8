"""anyio's 100% CPU spin in ``_deliver_cancellation`` left behind by a violation
(agronholm/anyio#1111, fixed by #1217, first released in 4.14.2).

    python anyio_cpu_spin.py [--fixed]

A client enters a task group in ``connect()``, run by a short-lived task;
``close()``, run by the main task, cancels the group's scope and exits it:
anyio refuses the exit ("... in a different task"), but the cancellation is
already scheduled and the scope stays active with the finished task in it.
Before 4.14.2 ``_deliver_cancellation`` then reschedules itself on every loop
iteration, forever.  The violation is the application's (its ``connect()`` /
``close()``); the advice about anyio < 4.14.2 is the known-bug table's.
``--fixed``: connect() and close() in one owner task.

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>`` (with the number of ``_deliver_cancellation`` calls in an
idle 0.3 s window after the violation).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from _driver import finish, trace

trace()  # before anyio is imported

import anyio  # noqa: E402
import anyio.abc  # noqa: E402
from anyio._backends import _asyncio as anyio_asyncio  # noqa: E402


class Client:
    """A client that owns a task group from connect() to close()."""

    def __init__(self) -> None:
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop = anyio.Event()

    async def connect(self) -> None:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._stop.wait)  # a background reader, say

    async def close(self) -> None:
        assert self._tg is not None
        self._stop.set()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)


calls = 0


def count_deliveries() -> None:
    original = anyio_asyncio.CancelScope._deliver_cancellation

    def counting(self, origin):
        global calls
        calls += 1
        return original(self, origin)

    anyio_asyncio.CancelScope._deliver_cancellation = counting


async def main(fixed: bool, out: dict[str, Any]) -> None:
    client = Client()
    loop = asyncio.get_running_loop()
    if fixed:
        async def owner() -> None:
            await client.connect()
            await client.close()

        await loop.create_task(owner(), name="owner")
    else:
        await loop.create_task(client.connect(), name="connect")
        try:
            await client.close()  # in the main task: not the one that entered the group
        except RuntimeError as exc:
            out["errors"].append(f"RuntimeError: {exc}")
    before = calls
    await anyio.sleep(0.3)  # idle
    out["deliveries_in_window"] = calls - before
    out["spins"] = calls - before > 1000
    out["answer"] = "done"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixed", action="store_true")
    args = parser.parse_args()
    count_deliveries()
    result: dict[str, Any] = {"errors": []}
    anyio.run(main, args.fixed, result)
    sys.exit(finish(result))
