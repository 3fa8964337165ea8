"""Orphaned-scope early warning: a task ended while a scope it entered is open.

Nobody can exit such a scope correctly any more: it either leaks, or another
task exits it later and anyio refuses (seed 003's crash).  This module reports
it the moment the task ends, as the span and event ``anyio.cancel_scope.orphaned``,
a count on the counter of the same name and a WARNING log record.

The hot path only *arms* the check (see the backends); finding the open scopes
and reporting them runs when a task ends, and only for tasks that entered a
scope.  A scope is reported once: if another task exits it before the ending
task's check has run (asyncio runs done-callbacks one loop step late), the exit
hook reports the orphan first, then the violation.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from . import semconv
from ._export import tracing_configured
from ._runtime import Runtime
from ._violation import TaskInfo, common_attributes, current_thread, opener_stack, side

_log = logging.getLogger(semconv.LOGGER_NAME)


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A scope left open by the task that entered it, which has ended."""

    backend: str
    opener: TaskInfo
    entered_at_ns: int | None
    thread_id: int
    thread_name: str
    task_group_host: str | None = None
    task_group_children: tuple[str, ...] = ()
    opener_context: Any = dataclasses.field(default=None, repr=False, compare=False)

    def attributes(self) -> dict[str, Any]:
        opener = dataclasses.replace(self.opener, running=False)
        return common_attributes(
            self.backend, opener, self.thread_id, self.thread_name,
            self.task_group_host, self.task_group_children,
        )

    def summary(self) -> str:
        return (
            f"anyio cancel scope orphaned: task {self.opener.name!r} ended with the scope "
            f"it entered at {self.opener.site} still open"
        )

    def format(self) -> str:
        lines = [
            "scopetrace: anyio cancel scope orphaned (early warning)",
            f"  backend:    {self.backend}, thread {self.thread_name!r}",
            f"  entered by: task {self.opener.name!r} (id {self.opener.id}) running "
            f"{self.opener.coroutine} [finished]",
            f"              at {self.opener.site}",
        ]
        if self.task_group_host is not None:
            lines.append(
                f"  task group: host {self.task_group_host}; children "
                f"{', '.join(self.task_group_children) or '(none alive)'}"
            )
        lines += [
            "  the task ended without exiting this scope: it leaks, or another task will "
            "exit it and anyio will refuse; enter and exit a scope in one task",
            "  entering stack (most recent call last):",
            "\n".join("  " + line for line in self.opener.stacktrace.splitlines())
            or "    <not recorded>",
        ]
        return "\n".join(lines)


class Orphans:
    """Builds and emits orphan reports for one runtime and backend."""

    def __init__(self, runtime: Runtime, backend: str) -> None:
        self.runtime = runtime
        self.backend = backend
        self._counter: Any = None
        #: Callables given each Orphan (the pytest plugin subscribes).
        self.listeners: list[Callable[[Orphan], None]] = []

    def report(
        self,
        scope: Any,
        task: tuple[str, int, str],
        group: tuple[str | None, tuple[str, ...]] = (None, ()),
    ) -> None:
        """Report ``scope``, left open by the ended ``task`` (name, id, coroutine)."""
        record = self.runtime.records.get(id(scope))
        if record is not None and len(record) == 2 and isinstance(record[0], tuple):
            record = record[0]  # the trio backend keeps (record, task)
        name, task_id, coroutine = task
        thread_id, thread_name = current_thread()
        orphan = Orphan(
                backend=self.backend,
                opener=side(name, task_id, coroutine, opener_stack(record), False),
                entered_at_ns=record[0] if record else None,
                thread_id=thread_id,
                thread_name=thread_name,
                task_group_host=group[0],
                task_group_children=group[1],
                opener_context=record[1] if record else None,
        )
        self._count(orphan)
        # A task that leaks in a loop would flood the exporter: spans, events
        # and logs are rate limited per opener site, like violations.
        key = (semconv.ORPHANED_SPAN, orphan.opener.site)
        suppressed = self.runtime.reporter.limiter.allow(key)
        if suppressed is not None:
            self.emit(orphan, suppressed)

    def _count(self, orphan: Orphan) -> None:
        if self._counter is None:
            self._counter = self.runtime.reporter.sink.meter().create_counter(
                semconv.ORPHANED_METRIC,
                unit="{scope}",
                description="anyio cancel scopes left open by a task that ended",
            )
        self._counter.add(
            1, {semconv.BACKEND: orphan.backend, semconv.OPENER_SITE: orphan.opener.site}
        )

    def emit(self, orphan: Orphan, suppressed: int = 0) -> None:
        attrs = orphan.attributes()
        if suppressed:
            attrs[semconv.SUPPRESSED] = suppressed
        sink = self.runtime.reporter.sink
        ctx = orphan.opener_context
        # The trace of the request that entered the scope is where it belongs.
        span = sink.tracer().start_span(
            semconv.ORPHANED_SPAN,
            context=ctx if ctx is not None else otel_context.Context(),
            kind=trace.SpanKind.INTERNAL,
            attributes=attrs,
        )
        span.end()
        current = trace.get_current_span(ctx) if ctx is not None else trace.INVALID_SPAN
        if current.is_recording():
            current.add_event(semconv.ORPHANED_SPAN, attrs)
        _log.warning(
            "%s", orphan.summary(),
            extra={"scopetrace": attrs, "scopetrace_report": orphan.format()},
        )
        for listener in list(self.listeners):
            listener(orphan)
        if not tracing_configured() and sink.exporter == "console":
            print(orphan.format(), file=sys.stderr, flush=True)


# -- asyncio --------------------------------------------------------------------


class AsyncioWatcher:
    """Checks a task for open scopes when it ends.

    The enter hook calls :meth:`watch` for a task's outermost scope (cheap to
    test: anyio leaves ``_parent_scope`` None there), so only tasks that
    entered a scope are watched, each with one done-callback.
    """

    def __init__(
        self,
        orphans: Orphans,
        task_states: Any,
        describe: Callable[[Any], tuple[Any, ...]],
        group_view: Callable[[Any, Any], tuple[str | None, tuple[str, ...]]],
    ) -> None:
        self.orphans = orphans
        self.task_states = task_states
        self.describe = describe
        self.group_view = group_view
        #: id(task) -> (name, id, coroutine) of the tasks with our done-callback,
        #: until it has run.  Described while running: a task the eager task
        #: factory ran to completion has no name or coroutine left at its end.
        self.watched: dict[int, tuple[str, int, str]] = {}
        #: id(scope) of orphans the exit hook reported before the callback ran.
        self._early: set[int] = set()
        #: What the enter hook compares tasks with before any task was watched.
        self.nobody = weakref.ref(self)

    def watch(self, task: Any) -> weakref.ref[Any]:
        """Check ``task`` for open scopes when it ends; returns a weak reference
        to it for the enter hook's fast path (never a strong one: a task that is
        destroyed pending must stay collectable)."""
        key = id(task)
        if key in self.watched:
            return weakref.ref(task)
        self.watched[key] = self.describe(task)[:3]
        # Keep anyio's TaskState: anyio deletes it for task-group children in
        # its own done-callback, which runs before ours.
        # An empty context: by default the callback would hold a copy of the
        # application's context, and every ContextVar value in it, for as long
        # as the task lives (anyio's test_run_sync_worker_cyclic_references).
        task.add_done_callback(
            functools.partial(self._ended, self.task_states.get(task)),
            context=contextvars.Context(),
        )
        return weakref.ref(task)

    def _ended(self, state: Any, task: Any) -> None:
        described = self.watched.pop(id(task), None)
        try:
            for scope in asyncio_open_scopes(state, task):
                if id(scope) not in self.orphans.runtime.records:
                    # Entered before install(), or its exit was already
                    # refused and reported as a violation.
                    continue
                if id(scope) in self._early:
                    self._early.discard(id(scope))
                    continue
                self._report(scope, task, described)
        except Exception:
            self.orphans.runtime.internal_error("asyncio task end check")

    def before_violation(self, scope: Any, host: Any) -> None:
        """Called when a task exits a scope whose opener has ended: done-callbacks
        run a loop step late, so the orphan warning may not be out yet."""
        try:
            described = self.watched.get(id(host))
            if described is not None and host.done() and id(scope) not in self._early:
                self._early.add(id(scope))
                self._report(scope, host, described)
        except Exception:
            # The violation report that follows must not be lost with it.
            self.orphans.runtime.internal_error("asyncio orphan report")

    def _report(self, scope: Any, task: Any, described: tuple[str, int, str] | None) -> None:
        if described is None:
            described = self.describe(task)[:3]
        host, children = self.group_view(scope, task)
        # The host is the ended task itself: its name as described while it ran.
        group = (described[0] if host is not None else None, children)
        self.orphans.report(scope, described, group)


def asyncio_open_scopes(state: Any, task: Any) -> Iterator[Any]:
    """Scopes ``task`` entered and left open, innermost first, from anyio's TaskState."""
    scope = getattr(state, "cancel_scope", None)
    while scope is not None:
        if scope._host_task is task and scope._active:
            yield scope
        scope = scope._parent_scope


# -- trio -------------------------------------------------------------------------


def trio_open_scopes(task: Any, records: dict[int, Any]) -> Iterator[Any]:
    """Scopes ``task`` entered and left open, innermost first: the inner end of
    its cancel status chain, as long as our records name it as the opener."""
    status = task._cancel_status
    while status is not None:
        scope = status._scope
        entry = records.get(id(scope))
        if entry is None or entry[1] is not task:
            break
        yield scope
        status = status.parent


def patch_trio_task_exit(
    module: Any, runtime: Runtime, orphans: Orphans, describe: Callable[[Any], tuple[Any, ...]],
    group_view: Callable[[Any, Any], tuple[str | None, tuple[str, ...]]],
) -> Callable[[], None]:
    """Check each trio task as it exits, before trio forgets its cancel status.

    ``Instrument.task_exited`` would be the public hook, but trio calls it after
    it has reset the task's cancel status; ``Runner.task_exited`` is where the
    status still says which scopes the task left open.
    """
    runner_cls = module._core._run.Runner
    original = runner_cls.__dict__["task_exited"]
    records = runtime.records
    internal_error = runtime.internal_error

    def task_exited(self: Any, task: Any, outcome: Any) -> Any:
        try:
            status = task._cancel_status
            # Fast exit: the innermost scope is not one this task entered.
            if status is not None:
                entry = records.get(id(status._scope))
                if entry is not None and entry[1] is task:
                    name, task_id, coroutine, _ = describe(task)
                    for scope in trio_open_scopes(task, records):
                        orphans.report(scope, (name, task_id, coroutine), group_view(scope, task))
        except Exception:
            internal_error("trio task exit hook")
        return original(self, task, outcome)

    runner_cls.task_exited = task_exited

    def unpatch() -> None:
        if runner_cls.__dict__.get("task_exited") is task_exited:
            runner_cls.task_exited = original

    return unpatch
