"""Ownership context: for a task group's scope, who hosts it and which children
are alive, on the violation and on the orphan warning."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from scopetrace import semconv

from .scenarios import plain_tasks


class Client:
    """Seed 000's shape: start() enters a task group with background workers,
    close() exits it, and the two may run in different tasks."""

    def __init__(self) -> None:
        self.tg: Any = None
        self.release = anyio.Event()

    async def worker(self) -> None:
        await self.release.wait()

    async def start(self) -> None:
        self.tg = anyio.create_task_group()
        await self.tg.__aenter__()
        self.tg.start_soon(self.worker, name="reader")
        self.tg.start_soon(self.worker, name="writer")
        await anyio.sleep(0)  # the children start

    async def close(self) -> None:
        self.release.set()
        await self.tg.__aexit__(None, None, None)


def _run(backend: Any, scenario: Any) -> list[BaseException]:
    caught: list[BaseException] = []
    name, options = backend
    anyio.run(scenario, caught, backend=name, backend_options=options)
    return caught


async def _foreign_exit(caught: list[BaseException]) -> None:
    """Another task exits the group's scope while its children run; the host
    then closes the group properly."""
    client = Client()
    started, attempted = anyio.Event(), anyio.Event()

    async def owner() -> None:
        await client.start()
        started.set()
        await attempted.wait()
        await client.close()

    async def other() -> None:
        await started.wait()
        try:
            client.tg.cancel_scope.__exit__(None, None, None)
        except RuntimeError as exc:
            caught.append(exc)
        attempted.set()

    await plain_tasks(owner, other)


async def _host_ends_inside(caught: list[BaseException]) -> None:
    """Seed 000's precondition: the host task ends with its group still open."""
    client = Client()
    started = anyio.Event()

    async def owner() -> None:
        await client.start()
        started.set()

    async def other() -> None:
        await started.wait()
        await anyio.sleep(0)
        try:
            await client.close()
        except RuntimeError as exc:
            caught.append(exc)

    await plain_tasks(owner, other)


def test_violation_names_host_and_children(
    backend: Any, traced: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caught = _run(backend, _foreign_exit)
    assert len(caught) == 1
    (span,) = traced.finished(semconv.VIOLATION_SPAN)
    attrs = span.attributes
    host = attrs[semconv.OPENER_TASK_NAME]
    assert attrs[semconv.TASK_GROUP_HOST] == host
    assert list(attrs[semconv.TASK_GROUP_CHILDREN]) == ["reader", "writer"]
    (record,) = [r for r in caplog.records if hasattr(r, "scopetrace_report")]
    assert f"  task group: host {host}; children reader, writer" in (
        record.scopetrace_report.splitlines()
    )
    assert traced.finished(semconv.ORPHANED_SPAN) == []


def test_orphaned_task_group_names_its_children(backend: Any, traced: Any) -> None:
    if backend[0] == "trio":
        # trio itself fails the run when a task exits inside its own nursery;
        # the warning comes first.
        with pytest.raises(Exception, match="Nursery stack corrupted|Exceptions from Trio"):
            _run(backend, _host_ends_inside)
    else:
        _run(backend, _host_ends_inside)
    orphan = traced.finished(semconv.ORPHANED_SPAN)[0]
    attrs = orphan.attributes
    assert attrs[semconv.TASK_GROUP_HOST] == attrs[semconv.OPENER_TASK_NAME]
    assert list(attrs[semconv.TASK_GROUP_CHILDREN]) == ["reader", "writer"]


def test_plain_scope_has_no_task_group_context(backend: Any, traced: Any) -> None:
    async def scenario(caught: list[BaseException]) -> None:
        scopes: list[anyio.CancelScope] = []
        entered = anyio.Event()

        async def opener() -> None:
            scope = anyio.CancelScope()
            scope.__enter__()
            scopes.append(scope)
            entered.set()
            await anyio.sleep(0.01)

        async def closer() -> None:
            await entered.wait()
            try:
                scopes[0].__exit__(None, None, None)
            except RuntimeError as exc:
                caught.append(exc)

        await plain_tasks(opener, closer)

    _run(backend, scenario)
    (span,) = traced.finished(semconv.VIOLATION_SPAN)
    assert semconv.TASK_GROUP_HOST not in span.attributes
    assert semconv.TASK_GROUP_CHILDREN not in span.attributes
