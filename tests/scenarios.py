"""Violation scenarios shared by the tests, each deterministic on both backends.

Every scenario is ``async def f(caught: list[BaseException]) -> None``: the
"application" catches what anyio raises and appends it, as a web framework
would turn it into a 500.  Ordering is fixed with events, never with sleeps:
trio runs the tasks woken together in a random order, so staggered sleeps
reorder under load.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sniffio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

Scenario = Callable[[list[BaseException]], Awaitable[None]]


def qualname(name: str) -> str:
    """How a frame's function shows in a stack: Python 3.10 has no co_qualname."""
    return name if sys.version_info >= (3, 11) else name.rpartition(".")[2]


def backend_name() -> str:
    return sniffio.current_async_library()


async def plain_tasks(*funcs: Callable[[], Awaitable[Any]]) -> None:
    """Run callables as plain event-loop tasks (gather() / a raw trio nursery),
    started in order, and wait for all of them."""
    if backend_name() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for func in funcs:
                nursery.start_soon(func)
                await trio.sleep(0)
    else:
        await asyncio.gather(*(func() for func in funcs))


async def catching(caught: list[BaseException], func: Callable[[], Awaitable[Any]]) -> None:
    try:
        await func()
    except RuntimeError as exc:
        caught.append(exc)


# -- wrong_task ---------------------------------------------------------------


class RefCounted:
    """Seed 003's connection: first user opens the scope, last user closes it."""

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.count = 0

    async def __aenter__(self) -> RefCounted:
        if self.count == 0:
            self.scope = anyio.CancelScope()
            self.scope.__enter__()
        self.count += 1
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.count -= 1
        if self.count == 0:
            assert self.scope is not None
            self.scope.__exit__(*exc_info)


class InTurn:
    """``n`` calls inside one shared resource leave it in index order once all
    of them are inside: call 0 (which opened it) leaves first, call n-1 leaves
    last and closes it.  Each call awaits :meth:`turn` inside the resource
    and calls :meth:`left` once out of it (in a ``finally``: the last exit
    raises)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.inside = 0
        self.all_inside = anyio.Event()
        self.gone = [anyio.Event() for _ in range(n)]

    async def turn(self, idx: int) -> None:
        self.inside += 1
        if self.inside == self.n:
            self.all_inside.set()
        await self.all_inside.wait()
        if idx:
            await self.gone[idx - 1].wait()

    def left(self, idx: int) -> None:
        self.gone[idx].set()


def leaking(kept: list[Any]) -> Callable[[], Awaitable[None]]:
    """An anyio main: one plain task ends with a scope open (kept alive in
    ``kept``), and the main task waits one step for asyncio's done-callbacks."""

    async def leak() -> None:
        scope = anyio.CancelScope()
        scope.__enter__()
        kept.append(scope)

    async def main() -> None:
        await plain_tasks(leak)
        await anyio.sleep(0)

    return main


async def sibling_gather(caught: list[BaseException]) -> None:
    """4 gathered tool calls: call 0 opens and finishes first, call 3 closes."""
    conn = RefCounted()
    turns = InTurn(4)

    def call(idx: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                async with conn:
                    await turns.turn(idx)
            finally:
                turns.left(idx)

        return lambda: catching(caught, run)

    await plain_tasks(*(call(i) for i in range(4)))


async def sibling_running(caught: list[BaseException]) -> None:
    """The opener is still running (waiting) when a sibling closes its scope."""
    scope = anyio.CancelScope()
    entered, closed = anyio.Event(), anyio.Event()

    async def opener() -> None:
        scope.__enter__()
        entered.set()
        await closed.wait()

    async def closer() -> None:
        await entered.wait()
        try:
            scope.__exit__(None, None, None)
        except RuntimeError as exc:
            caught.append(exc)
        closed.set()

    await plain_tasks(opener, closer)


async def opener_finished(caught: list[BaseException]) -> None:
    """Task A enters and returns; later task B, from another group, exits."""
    scope = anyio.CancelScope()
    entered, release = anyio.Event(), anyio.Event()

    async def opener() -> None:
        scope.__enter__()
        entered.set()  # and returns at once: finished before B runs

    async def keeper() -> None:
        await release.wait()  # keeps A's group (and so the scope's parent) open

    async def closer() -> None:
        await entered.wait()
        try:
            scope.__exit__(None, None, None)
        except RuntimeError as exc:
            caught.append(exc)
        release.set()

    async def first_group() -> None:
        await plain_tasks(opener, keeper)

    async def second_group() -> None:
        await plain_tasks(closer)

    await plain_tasks(first_group, second_group)


async def task_group_other_task(caught: list[BaseException]) -> None:
    """A task group entered by one task and exited by another (trio: a nursery,
    closed through trio's internal CancelScope._close)."""
    tg = anyio.create_task_group()
    entered, done = anyio.Event(), anyio.Event()

    async def opener() -> None:
        await tg.__aenter__()
        entered.set()
        await done.wait()

    async def closer() -> None:
        await entered.wait()
        try:
            await tg.__aexit__(None, None, None)
        except RuntimeError as exc:
            caught.append(exc)
        done.set()

    await plain_tasks(opener, closer)


async def asyncgen_finalizer(caught: list[BaseException]) -> None:
    """Seed 000: a task group spanning a yield, closed by the loop's finalizer."""

    async def query() -> Any:
        async with anyio.create_task_group():
            yield 1
            yield 2

    async def consume() -> None:
        async for _ in query():
            break

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, ctx: caught.append(ctx["exception"]))
    await plain_tasks(consume)
    for _ in range(20):
        await anyio.sleep(0.005)


# -- not_innermost ------------------------------------------------------------


async def misnested(caught: list[BaseException]) -> None:
    """One task exits an outer scope while an inner one is still open."""
    outer, inner = anyio.CancelScope(), anyio.CancelScope()
    outer.__enter__()
    inner.__enter__()
    try:
        outer.__exit__(None, None, None)
    except RuntimeError as exc:
        caught.append(exc)
    # Unwind as well as the backend allows so the run can end cleanly.
    for scope in (inner, outer):
        try:
            scope.__exit__(None, None, None)
        except RuntimeError:
            pass


# -- running and comparing ----------------------------------------------------

_ADDRESS = re.compile(r"0x[0-9a-f]+|\d+\.\d+ seconds")


def normalise(text: str) -> str:
    """Messages with object addresses or deadlines compare equal across runs."""
    return _ADDRESS.sub("<n>", text)


def shape(exc: BaseException | None) -> Any:
    """Type, message and (for groups) the nested shape of an exception."""
    if exc is None:
        return None
    if isinstance(exc, BaseExceptionGroup):
        return (type(exc).__name__, normalise(exc.message), [shape(e) for e in exc.exceptions])
    return (type(exc).__name__, normalise(str(exc)))


def run(
    scenario: Scenario, backend: tuple[str, dict[str, Any]]
) -> tuple[list[BaseException], BaseException | None]:
    """Run a scenario; return what the application caught and how the run ended."""
    import scopetrace

    caught: list[BaseException] = []
    name, options = backend
    try:
        anyio.run(scenario, caught, backend=name, backend_options=options)
    except BaseException as exc:  # the outcome itself is under test
        return caught, exc
    finally:
        scopetrace.flush()  # reports are delivered on a background thread
    return caught, None
