"""``scopetrace demo``: two real bugs in miniature, traced, and their fixes.

1. Async-generator teardown (claude-agent-sdk #983): a task group entered
   inside an async generator is exited by the event loop's finalizer task.
2. Shared ref-counted connection (pydantic-ai #2355): the first of 4 parallel
   tool calls opens the connection's scope, the last one to finish closes it —
   from another task, or from inside its own timeout block.

Each buggy pattern is followed by its fix (a dedicated owner task); the fix
must produce no report.  Orderings are fixed by staggered sleeps, not luck.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import IO, Any

import anyio

from ._install import current_runtime, flush, install, is_installed, uninstall
from ._report import Report, format_incident

# -- claude-agent-sdk #983: a task group inside an async generator -------------------------


async def _query() -> AsyncIterator[str]:
    """Like claude-agent-sdk's ``process_query``: a task group spans the yields."""
    async with anyio.create_task_group():
        yield "AssistantMessage"
        yield "ResultMessage"


async def _consume_and_drop() -> None:
    # Stop iterating early and drop the generator without aclose(): the loop's
    # async-generator hooks then close it from a task of their own.
    async for message in _query():
        if message == "AssistantMessage":
            break


async def _messages() -> AsyncGenerator[str, None]:
    yield "AssistantMessage"
    yield "ResultMessage"


async def _consume_and_close() -> None:
    # The fix: the consuming task owns the task group, and the generator, which
    # no longer spans a scope, is closed in that task too.
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)  # the SDK's background reader
        async with contextlib.aclosing(_messages()) as messages:
            async for message in messages:
                if message == "AssistantMessage":
                    break


async def _gather(*calls: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
    """Run calls as plain event-loop tasks, started in order, as the real bugs did.

    asyncio.gather() (as pydantic-ai does) or a raw trio nursery; not anyio task groups,
    whose children (anyio >= 4.16) close their own scope at the end and so
    catch a leaked scope sooner, in the opener.
    """
    if _backend_name() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for func, args in calls:
                nursery.start_soon(func, *args)
                await trio.sleep(0)
    else:
        await asyncio.gather(*(func(*args) for func, args in calls))


def _backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


async def asyncgen_buggy() -> None:
    await _gather((_consume_and_drop, ()))
    await _settle()


async def asyncgen_fixed() -> None:
    await _gather((_consume_and_close, ()))
    await _settle()


async def _settle() -> None:
    # Let the finalizer task (asyncio) or system task (trio) run to completion.
    for _ in range(20):
        await anyio.sleep(0.005)


# -- pydantic-ai #2355: a shared, ref-counted connection --------------------------------


class SharedConnectionBuggy:
    """pydantic-ai's old MCP server shape: first user opens, last user closes."""

    def __init__(self) -> None:
        self._scope: anyio.CancelScope | None = None
        self._count = 0

    async def __aenter__(self) -> SharedConnectionBuggy:
        if self._count == 0:
            self._scope = anyio.CancelScope()
            self._scope.__enter__()  # in whichever task got here first
        self._count += 1
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._count -= 1
        if self._count == 0:
            assert self._scope is not None
            self._scope.__exit__(*exc_info)  # in whichever task finishes last


class SharedConnectionFixed:
    """pydantic-ai #4514's shape: a dedicated task owns the scope."""

    def __init__(self) -> None:
        self._ready = anyio.Event()
        self._stop = anyio.Event()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope():  # entered and exited in this one task
            task_status.started()
            await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def __aenter__(self) -> SharedConnectionFixed:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        return None


async def _tool_call(conn: Any, idx: int, delay: float, errors: list[BaseException]) -> None:
    try:
        async with conn:
            await anyio.sleep(delay)
    except RuntimeError as exc:  # what the app would turn into an HTTP 500
        errors.append(exc)


async def _tool_call_in_timeout(
    conn: Any, idx: int, delay: float, errors: list[BaseException]
) -> None:
    # Releases the connection from inside its own timeout block.
    try:
        await conn.__aenter__()
        with anyio.fail_after(5):
            await anyio.sleep(delay)
            await conn.__aexit__(None, None, None)
    except RuntimeError as exc:
        errors.append(exc)


async def shared_buggy(errors: list[BaseException]) -> None:
    conn = SharedConnectionBuggy()
    # Call 0 opens the scope and finishes first; call 3 finishes last and closes.
    await _gather(*((_tool_call, (conn, i, 0.01 * (i + 1), errors)) for i in range(4)))


async def shared_misnested(errors: list[BaseException]) -> None:
    conn = SharedConnectionBuggy()
    # Call 0 opens the scope and is also the last to finish.
    await _gather(*((_tool_call_in_timeout, (conn, i, 0.01 * (4 - i), errors)) for i in range(4)))


async def shared_fixed(errors: list[BaseException]) -> None:
    conn = SharedConnectionFixed()
    async with anyio.create_task_group() as owner:
        await owner.start(conn.run)
        await _gather(*((_tool_call, (conn, i, 0.01 * (i + 1), errors)) for i in range(4)))
        conn.stop()


# -- running them --------------------------------------------------------------

Scenario = tuple[str, Callable[..., Any], bool]

SCENARIOS: list[tuple[str, str, bool]] = [
    ("async-generator teardown (claude-agent-sdk #983)", "asyncgen_buggy", True),
    ("  fixed: the consuming task owns the task group", "asyncgen_fixed", False),
    ("shared connection, 4 parallel tool calls (pydantic-ai #2355)", "shared_buggy", True),
    ("shared connection released inside a timeout block", "shared_misnested", True),
    ("  fixed: a dedicated owner task (pydantic-ai #4514)", "shared_fixed", False),
]


def _run_scenario(name: str, backend: str) -> tuple[list[Report], list[BaseException]]:
    runtime = current_runtime()
    assert runtime is not None
    seen: list[Report] = []
    runtime.reporter.listeners.append(seen.append)
    errors: list[BaseException] = []
    func = globals()[name]
    args = (errors,) if name.startswith("shared") else ()

    async def main() -> None:
        if backend == "asyncio":
            # "Task exception was never retrieved" would go to stderr: keep it.
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, ctx: errors.append(ctx["exception"]) if "exception" in ctx else None
            )
        await func(*args)

    try:
        anyio.run(main, backend=backend)
        flush()
    finally:
        runtime.reporter.listeners.remove(seen.append)
    return seen, errors


def run_demo(backend: str, out: IO[str]) -> int:
    """Run every scenario on the chosen backend(s); 0 if each behaved as expected."""
    backends = ["asyncio", "trio"] if backend == "all" else [backend]
    if "trio" in backends:
        import importlib.util

        if importlib.util.find_spec("trio") is None:
            print("(trio is not installed: skipping the trio backend)", file=out)
            backends.remove("trio")
    was_installed = is_installed()
    if not was_installed:
        install(exporter="none")
    failures = 0
    try:
        for be in backends:
            print(f"\n=== backend: {be} " + "=" * 50, file=out)
            for title, name, expect in SCENARIOS:
                if be == "trio" and name == "asyncgen_buggy":
                    # trio catches this one itself, before any scope exit: its
                    # "Nursery stack corrupted ... closed before the task
                    # exited" error names the task that left the nursery open.
                    print(f"\n--- {title}: skipped on trio (trio reports it itself)", file=out)
                    continue
                seen, errors = _run_scenario(name, be)
                violated = any(report.is_violation for report in seen)
                verdict = ("reported" if violated else "no report") + (
                    " (as expected)"
                    if violated == expect and (seen or not expect)
                    else " (UNEXPECTED)"
                )
                failures += violated != expect or (not expect and bool(seen))
                print(f"\n--- {title}: {verdict}", file=out)
                for exc in errors:
                    first_line = str(exc).splitlines()[0] if str(exc) else ""
                    print(f"    the application saw: {type(exc).__name__}: {first_line}", file=out)
                    for note in getattr(exc, "__notes__", ()):
                        print(f"      note: {note}", file=out)
                incidents: dict[str, list[Report]] = {}
                for report in seen:
                    incidents.setdefault(report.incident_id, []).append(report)
                for reports in incidents.values():
                    print(format_incident(reports), file=out)
    finally:
        if not was_installed:
            uninstall()
    print(
        f"\n{'all scenarios behaved as expected' if not failures else f'{failures} unexpected'}",
        file=out,
    )
    return 1 if failures else 0
