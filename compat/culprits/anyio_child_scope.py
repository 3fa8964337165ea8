"""A task-group child that ends with a cancel scope of its own still open.

    python anyio_child_scope.py --scenario manual|asyncgen [--backend asyncio|trio] [--fixed]

* ``manual``   -- the child calls ``move_on_after(...).__enter__()`` and returns
  without ``__exit__`` (a hand-rolled context manager that forgot its exit).
* ``asyncgen`` -- the child breaks out of ``async for`` over a generator that
  yields inside ``with move_on_after(...)``: the abandoned generator keeps the
  scope open in the child's task; the event loop's finalizer closes it later,
  in a task of its own.
* ``--fixed``  -- the same children written correctly (``with``;
  ``contextlib.aclosing``): clean.

From anyio 4.14 every child runs inside a scope anyio enters in
``TaskHandle._run_coro``; a child ending with its own scope open makes anyio
refuse the exit of that wrapper (asyncio: "isn't the current tasks's current
cancel scope"; trio: "Cancel scope stack corrupted").  That wrapper is anyio's:
the report must name the child's leaked scope (the scope in the way) and the
child's code.  anyio <= 4.13 raises nothing at the child's end (an orphan
warning only).

Written for compat/verify_culprits.py: scopetrace is installed with the jsonl
exporter at ``$VERIFY_CULPRITS_JSONL``; the last stdout line is
``RESULT <json>``.  Deterministic: no sleeps.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from _driver import finish, leaves, trace

trace()  # before anyio is imported

import anyio  # noqa: E402
import anyio.lowlevel  # noqa: E402

#: Set when ``ticks()`` has been closed, by whichever task closed it.
generator_closed: anyio.Event | None = None


async def ticks():
    """Yields forever, each time from inside a deadline scope."""
    try:
        with anyio.move_on_after(3600):
            while True:
                yield None
    finally:
        assert generator_closed is not None
        generator_closed.set()


async def leaky_child_manual() -> None:
    scope = anyio.move_on_after(3600)
    scope.__enter__()  # never exited: the bug
    await anyio.lowlevel.checkpoint()


async def leaky_child_asyncgen() -> None:
    async for _ in ticks():
        break  # abandons the generator with its scope open in this task


async def fixed_child_manual() -> None:
    with anyio.move_on_after(3600):
        await anyio.lowlevel.checkpoint()


async def fixed_child_asyncgen() -> None:
    async with contextlib.aclosing(ticks()) as it:
        async for _ in it:
            break
    await anyio.lowlevel.checkpoint()


async def main(scenario: str, fixed: bool, out: dict[str, Any]) -> None:
    global generator_closed
    generator_closed = anyio.Event()
    if fixed:
        children = [fixed_child_manual, fixed_child_asyncgen]
    else:
        children = [leaky_child_manual if scenario == "manual" else leaky_child_asyncgen]
    for child in children:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(child, name="leaky-child")
        except BaseException as exc:
            out["errors"] += leaves(exc)
    if not fixed and scenario == "asyncgen":
        # The abandoned generator is closed by the event loop's finalizer, bounded.
        with anyio.move_on_after(10):
            await generator_closed.wait()
        out["generator_closed"] = generator_closed.is_set()
    out["answer"] = "done"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--scenario", choices=("manual", "asyncgen"), default="manual")
    parser.add_argument("--fixed", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"errors": []}
    anyio.run(main, args.scenario, args.fixed, result, backend=args.backend)
    sys.exit(finish(result))
