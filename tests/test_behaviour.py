"""Tracing changes nothing anyio does, and stays silent on correct code."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import pytest

import scopetrace
from scopetrace import Report
from scopetrace._install import current_runtime

from .conftest import Reports

from . import scenarios

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

VIOLATING = [
    scenarios.sibling_gather,
    scenarios.sibling_running,
    scenarios.opener_finished,
    scenarios.task_group_other_task,
    scenarios.asyncgen_finalizer,
    scenarios.misnested,
]


def _outcome(scenario: scenarios.Scenario, backend: Any) -> Any:
    caught, ended = scenarios.run(scenario, backend)
    return [scenarios.shape(e) for e in caught], scenarios.shape(ended)


@pytest.mark.parametrize("scenario", VIOLATING, ids=lambda s: s.__name__)
def test_same_errors_with_and_without_tracing(scenario: Any, backend: Any) -> None:
    if scenario is scenarios.asyncgen_finalizer and backend[0] == "trio":
        pytest.skip("asyncio-specific")
    plain = _outcome(scenario, backend)
    scopetrace.install(exporter="none")
    traced = _outcome(scenario, backend)
    scopetrace.uninstall()
    again = _outcome(scenario, backend)
    assert plain[0], "the scenario must make anyio raise"
    assert traced == plain
    assert again == plain


# -- correct code: no report, same results ---------------------------------------


async def _clean_workload(results: list[Any]) -> None:
    """Everything anyio users do all day, including cancellations that fire."""

    finished = {"n": 0}

    async def child(i: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope(shield=i % 2 == 0):
            task_status.started(i)
            await anyio.sleep(0)
        with anyio.move_on_after(0.001) as scope:
            await anyio.sleep(1)
        results.append(("moved_on", scope.cancelled_caught))
        try:
            with anyio.fail_after(0.001):
                await anyio.sleep(1)
        except TimeoutError:
            results.append(("timed_out", i))
        finished["n"] += 1
        if finished["n"] % 8 == 0:
            all_done.set()

    for _round in range(5):
        all_done = anyio.Event()
        async with anyio.create_task_group() as outer:
            for i in range(4):
                results.append(("started", await outer.start(child, i)))
            async with anyio.create_task_group() as inner:
                for i in range(4):
                    inner.start_soon(child, i)
                inner.start_soon(anyio.sleep, 10)
                await all_done.wait()  # the 8 children are done; cancel the sleeper
                inner.cancel_scope.cancel()
        results.append(("thread", await anyio.to_thread.run_sync(lambda: 42)))
        with anyio.CancelScope() as cancelled:
            cancelled.cancel()
            await anyio.sleep(1)
        results.append(("cancelled", cancelled.cancelled_caught))
        try:
            async with anyio.create_task_group() as failing:
                failing.start_soon(anyio.sleep, 10)
                raise ValueError("boom")
        except BaseExceptionGroup as group:
            results.append(("group", scenarios.shape(group)))


def test_clean_workload_is_silent_and_unchanged(backend: Any) -> None:
    plain: list[Any] = []
    anyio.run(_clean_workload, plain, backend=backend[0], backend_options=backend[1])
    scopetrace.install(exporter="none")
    runtime = current_runtime()
    assert runtime is not None
    seen = Reports(violations_only=True)
    runtime.reporter.listeners.append(seen.add)
    traced: list[Any] = []
    anyio.run(_clean_workload, traced, backend=backend[0], backend_options=backend[1])
    assert seen == []
    assert runtime.internal_errors == 0
    # Concurrent children may interleave differently from run to run.
    assert sorted(map(repr, traced)) == sorted(map(repr, plain))
    assert ("moved_on", True) in traced and ("cancelled", True) in traced
    # Every scope that exited dropped its record.
    assert len(runtime.records) == 0
