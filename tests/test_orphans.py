"""Orphaned-scope early warning: a task ends while a scope it entered is open.

Every scenario is ordered by events on both backends; "before any other task
tries to close the scope" is checked by the order of the finished spans.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import anyio
import pytest

from scopetrace import semconv
from scopetrace._install import _anyio_wraps_children as anyio_wraps_children

from .scenarios import RefCounted, plain_tasks, qualname


def run(backend: Any, func: Any) -> None:
    name, options = backend
    anyio.run(func, backend=name, backend_options=options)


def orphan_points(traced: Any) -> int:
    return sum(p.value for p in traced.counter_points(semconv.ORPHANED_METRIC))


def test_seed_003_warns_before_the_violation(
    backend: Any, traced: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caught: list[BaseException] = []

    async def main() -> None:
        conn, a_in, b_in, a_out = RefCounted(), anyio.Event(), anyio.Event(), anyio.Event()

        async def opener() -> None:
            async with conn:
                a_in.set()
                await b_in.wait()
            a_out.set()

        async def closer() -> None:
            await a_in.wait()
            try:
                async with conn:
                    b_in.set()
                    await a_out.wait()
            except RuntimeError as exc:
                caught.append(exc)

        await plain_tasks(opener, closer)

    with caplog.at_level(logging.WARNING, logger=semconv.LOGGER_NAME):
        run(backend, main)
    assert len(caught) == 1  # anyio still refuses, exactly as before
    names = [s.name for s in traced.finished()]
    assert names == [semconv.ORPHANED_SPAN, semconv.VIOLATION_SPAN]
    (orphan,) = traced.finished(semconv.ORPHANED_SPAN)
    attrs = orphan.attributes
    assert attrs[semconv.BACKEND] == backend[0]
    assert attrs[semconv.OPENER_TASK_NAME].endswith("opener") or attrs[
        semconv.OPENER_TASK_NAME
    ].startswith("Task-")
    assert attrs[semconv.OPENER_TASK_COROUTINE].endswith("main.<locals>.opener")
    assert attrs[semconv.OPENER_RUNNING] is False
    assert attrs[semconv.OPENER_SITE].endswith("in " + qualname("RefCounted.__aenter__"))
    opener = qualname("test_seed_003_warns_before_the_violation.<locals>.main.<locals>.opener")
    assert f"in {opener}" in attrs[semconv.OPENER_STACKTRACE]
    assert orphan_points(traced) == 1
    # One failure, one log record: the violation, with its orphan warning.
    (record,) = [r for r in caplog.records if r.name == semconv.LOGGER_NAME]
    assert record.levelno == logging.ERROR
    assert "(and 1 more report(s) of this incident)" in record.getMessage()
    assert "also: orphaned (early warning)" in record.scopetrace_report
    assert [a.get(semconv.VIOLATION_KIND) for a in record.scopetrace_reports] == [
        None, semconv.KIND_WRONG_TASK
    ]
    assert record.scopetrace_reports[0][semconv.OPENER_SITE] == attrs[semconv.OPENER_SITE]
    (violation,) = traced.finished(semconv.VIOLATION_SPAN)
    assert violation.attributes[semconv.INCIDENT_ID] == attrs[semconv.INCIDENT_ID]
    # The violation links to the orphan warning of the same scope.
    assert orphan.context.span_id in [link.context.span_id for link in violation.links]


def test_leak_without_any_close(backend: Any, traced: Any) -> None:
    kept: list[anyio.CancelScope] = []

    async def leaker() -> None:
        scope = anyio.CancelScope()
        scope.__enter__()
        kept.append(scope)

    async def main() -> None:
        await plain_tasks(leaker)
        await anyio.sleep(0)  # asyncio: the done-callback runs one step later

    run(backend, main)
    assert [s.name for s in traced.finished()] == [semconv.ORPHANED_SPAN]
    assert orphan_points(traced) == 1
    assert "leaker" in traced.finished()[0].attributes[semconv.OPENER_TASK_COROUTINE]


def test_asyncgen_abandoned_by_its_consumer(traced: Any) -> None:
    """Seed 000's precondition: the consumer task ends with the generator's task
    group open; the finalizer task closes it later."""
    caught: list[BaseException] = []

    async def stream() -> Any:
        async with anyio.create_task_group():
            yield 1
            yield 2

    async def consumer() -> None:
        async for _ in stream():
            break  # no aclose(): the event loop's finalizer will close it

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: caught.append(ctx.get("exception")))
        await asyncio.create_task(consumer())
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    names = [s.name for s in traced.finished()]
    assert names[0] == semconv.ORPHANED_SPAN
    assert semconv.VIOLATION_SPAN in names
    violation = traced.finished(semconv.VIOLATION_SPAN)[0]
    assert violation.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_ASYNCGEN_FINALIZER


def test_properly_exited_scopes_are_not_orphans(backend: Any, traced: Any) -> None:
    """with-blocks, nesting, timeouts, cancellation, task groups and start()."""
    started = []
    timed_out: list[anyio.Event] = []  # made inside the run: an Event needs its loop

    async def service(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope():
            task_status.started()
            with anyio.move_on_after(0.001):
                await anyio.sleep(1)
        started.append(True)
        timed_out[0].set()

    async def child(ev: anyio.Event) -> None:
        with anyio.CancelScope():
            async with anyio.create_task_group() as inner:
                inner.start_soon(anyio.sleep, 0)
            await ev.wait()

    async def main() -> None:
        timed_out.append(anyio.Event())
        with anyio.CancelScope():
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0)
        with anyio.move_on_after(0.001):
            await anyio.sleep(1)
        ev = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(service)
            tg.start_soon(child, ev)
            tg.start_soon(anyio.sleep, 1)
            await anyio.sleep(0)
            ev.set()
            # Not a sleep: on a loaded machine 10 ms did not always see the
            # 1 ms timeout fire first (the trio cell of the matrix, once).
            await timed_out[0].wait()
            tg.cancel_scope.cancel()
        await plain_tasks(lambda: child(ev))
        await anyio.sleep(0)

    run(backend, main)
    assert started == [True]
    assert traced.finished() == []
    assert orphan_points(traced) == 0


def test_each_orphan_once_even_when_the_close_comes_first(backend: Any, traced: Any) -> None:
    """The closer runs in the very step the opener ends (its wake-up was queued
    first), before asyncio runs done-callbacks: still one warning, first."""
    scopes: list[anyio.CancelScope] = []
    closed = anyio.Event()

    async def opener(release: anyio.Event) -> None:
        scope = anyio.CancelScope()
        scope.__enter__()
        scopes.append(scope)
        release.set()  # wakes the closer before this task has even ended

    async def closer(release: anyio.Event) -> None:
        await release.wait()
        try:
            scopes[0].__exit__(None, None, None)
        except RuntimeError:
            closed.set()

    async def main() -> None:
        release = anyio.Event()
        await plain_tasks(lambda: opener(release), lambda: closer(release))
        await anyio.sleep(0)

    run(backend, main)
    assert closed.is_set()
    assert [s.name for s in traced.finished()] == [semconv.ORPHANED_SPAN, semconv.VIOLATION_SPAN]
    assert orphan_points(traced) == 1


def test_many_tasks_leave_nothing_behind(backend: Any, traced: Any) -> None:
    """One done-callback per task that entered a scope, gone when it ends."""
    from scopetrace._install import current_runtime

    async def worker() -> None:
        with anyio.CancelScope():
            await anyio.sleep(0)

    async def main() -> None:
        await plain_tasks(*([worker] * 200))
        await anyio.sleep(0)

    run(backend, main)
    runtime = current_runtime()
    assert runtime is not None and runtime.records == {}
    assert traced.finished() == []


def test_task_group_child_that_leaves_a_scope_open(backend: Any, traced: Any) -> None:
    """Regression (the culprit issue, part 3): anyio >= 4.14 runs each child
    inside a scope of its own (``TaskHandle._run_coro``), so a child that ends
    with a scope open makes anyio refuse the exit of that wrapper scope.  The
    report used to blame ``anyio/_core/_tasks.py`` with the misnest advice,
    and the early warning was gone.  Now the wrapper is treated as anyio's:
    the child's leaked scope is the scope in the way and the culprit, and the
    orphan warning fires for it, in the same incident.  Older anyio has no
    wrapper: children are watched and the leaked scope is an orphan."""
    kept: list[anyio.CancelScope] = []

    async def child() -> None:
        scope = anyio.CancelScope()
        scope.__enter__()
        kept.append(scope)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        await anyio.sleep(0)

    async def main_refused() -> None:
        with pytest.raises(Exception, match="unhandled errors|Exceptions from Trio"):
            await main()

    child_name = qualname("test_task_group_child_that_leaves_a_scope_open.<locals>.child")
    if anyio_wraps_children():
        run(backend, main_refused)
        (violation,) = traced.finished(semconv.VIOLATION_SPAN)
        attrs = violation.attributes
        assert attrs[semconv.VIOLATION_KIND] == semconv.KIND_NOT_INNERMOST
        assert child_name in attrs[semconv.OPENER_TASK_NAME]
        assert f"in {child_name}" in attrs[semconv.BLOCKER_SITE]
        assert attrs[semconv.BLOCKER_COUNT] == 1
        assert f"in {child_name}" in attrs[semconv.CULPRIT_SITE]
        assert "_tasks.py" not in attrs[semconv.CULPRIT_SITE]
        (orphan,) = traced.finished(semconv.ORPHANED_SPAN)
        assert f"in {child_name}" in orphan.attributes[semconv.OPENER_SITE]
        assert orphan.attributes[semconv.INCIDENT_ID] == attrs[semconv.INCIDENT_ID]
    elif backend[0] == "asyncio":
        run(backend, main)
        assert traced.finished(semconv.VIOLATION_SPAN) == []
        (orphan,) = traced.finished(semconv.ORPHANED_SPAN)
        assert f"in {child_name}" in orphan.attributes[semconv.OPENER_SITE]

def _our_callbacks(task: asyncio.Task[Any]) -> int:
    """How many of the task's done-callbacks are scopetrace's end check."""
    return sum(
        1
        for entry in task._callbacks or ()  # type: ignore[attr-defined]
        if "Watcher._ended" in repr(entry[0] if isinstance(entry, tuple) else entry)
    )


def test_clean_top_level_exit_disarms_the_end_check(traced: Any) -> None:
    """Performance regression (the newest-Pythons issue, part 4): every task
    that entered a scope kept a done-callback to its end, and asyncio runs
    each through ``call_soon`` -- about 10,000 instructions per request, most
    of the realistic-HTTP overhead.  A task whose top-level scope exited
    cleanly has nothing open: its callback is removed at that exit."""
    seen: list[int] = []

    async def request() -> None:
        task = asyncio.current_task()
        assert task is not None
        with anyio.CancelScope():
            seen.append(_our_callbacks(task))  # armed while the scope is open
        seen.append(_our_callbacks(task))  # disarmed once it exited

    async def main() -> None:
        await plain_tasks(request)

    anyio.run(main)
    assert seen == [1, 0]
    assert traced.finished() == []


def test_a_task_with_a_loop_of_scopes_stays_armed_and_is_checked(traced: Any) -> None:
    """A task that enters a second top-level scope is armed until it ends (the
    fast path for a loop of scopes), and a scope it then leaves open is still
    reported as an orphan at its end."""
    seen: list[int] = []
    kept: list[anyio.CancelScope] = []

    async def handler() -> None:
        task = asyncio.current_task()
        assert task is not None
        for _ in range(3):
            with anyio.CancelScope():
                pass
            seen.append(_our_callbacks(task))
        scope = anyio.CancelScope()
        scope.__enter__()
        kept.append(scope)

    async def main() -> None:
        await plain_tasks(handler)
        await anyio.sleep(0)  # the done-callback runs one step later

    anyio.run(main)
    assert seen == [0, 1, 1]
    (orphan,) = traced.finished(semconv.ORPHANED_SPAN)
    assert "handler" in orphan.attributes[semconv.OPENER_TASK_COROUTINE]


def test_a_refused_top_level_exit_keeps_the_check_armed(traced: Any) -> None:
    """The opener's top-level scope is exited by another task (refused): the
    opener is not disarmed, and its end still reports the orphan first."""
    caught: list[BaseException] = []

    async def main() -> None:
        scope = anyio.CancelScope()
        entered, opener_done = anyio.Event(), anyio.Event()

        async def opener() -> None:
            scope.__enter__()
            entered.set()

        async def closer() -> None:
            await entered.wait()
            await opener_done.wait()
            try:
                scope.__exit__(None, None, None)
            except RuntimeError as exc:
                caught.append(exc)

        async def both() -> None:
            await plain_tasks(opener)
            opener_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            tg.start_soon(both)

    anyio.run(main)
    assert len(caught) == 1
    assert [s.name for s in traced.finished()] == [semconv.ORPHANED_SPAN, semconv.VIOLATION_SPAN]
