"""trio backend: hooks on ``trio.CancelScope``.

anyio's trio ``CancelScope`` only wraps a ``trio.CancelScope``, and anyio task
groups are trio nurseries, whose scopes trio closes through
``CancelScope._close()`` rather than ``__exit__``.  So the hooks sit on trio's
own class: ``__enter__`` records, ``_close`` (the path both ``__exit__`` and
nurseries take) detects.  trio does not raise from ``_close``; it *returns*
the error to raise, so the note goes on the returned exception.

Orphans are found at task exit, off the enter/exit path: a patch on the
private ``Runner.task_exited``, because the public ``Instrument.task_exited``
runs after trio has reset the state that says which scopes the task left open.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import _record, semconv
from .._diagnosis import UNKNOWN_COROUTINE, Facts, TaskDescription, coroutine_name
from .._incidents import scope_key
from .._runtime import Runtime
from .._stacks import frames_of, is_task_group_child_wrapper

MODULE = "trio"
BACKEND = "trio"

#: Closing stacks are recorded at violations only: as deep as allowed.
CLOSER_DEPTH = 128


def patch(module: ModuleType, runtime: Runtime, wraps_children: bool = False) -> Callable[[], None]:
    cls = module.CancelScope
    current_task = module.lowlevel.current_task
    # trio's decorator, untyped to us: KeyboardInterrupt is deferred while the
    # hook runs, as it is inside trio's own __enter__.
    protect: Callable[[Callable[..., Any]], Callable[..., Any]] = (
        module.lowlevel.enable_ki_protection
    )
    _record.stop_at_loop_frame(module._core._run.unrolled_run.__code__)
    original_enter = cls.__dict__["__enter__"]
    original_close = cls.__dict__["_close"]
    records = runtime.records
    capture = runtime.capture
    var = runtime.context_var
    depth = runtime.options.stack_depth
    cap = runtime.options.max_open_scopes
    evict = records.evict
    internal_error = runtime.internal_error
    # Records refer to their task weakly, and a finished trio task is soon
    # gone: what the task-exit check saw of the task that left scopes open.
    ended = Ended()

    def refused_close(scope: Any, exc: Any, closer: Any, status: Any) -> Any:
        # Called by _close only: two frames up is the code that exited.
        try:
            record = _record.lookup(records, scope)
            records.pop(id(scope), None)
            closer_raw = _record.live_stack(CLOSER_DEPTH, skip=2)
            opener = _record.task_of(record)
            described = describe(opener) if opener is not None else ended.get(scope)
            if opener is not None:
                kind = semconv.KIND_NOT_INNERMOST if opener is closer else semconv.KIND_WRONG_TASK
            elif status.encloses(closer._cancel_status):
                kind = semconv.KIND_NOT_INNERMOST
            else:
                kind = semconv.KIND_WRONG_TASK
            blockers = (
                _open_inside(closer, status, records) if kind == semconv.KIND_NOT_INNERMOST else []
            )
            if blockers and is_task_group_child_wrapper(frames_of(_record.frames(record))):
                # anyio's own scope around a task-group child: the child is
                # ending with its scopes open, and trio will abandon them
                # before the task exits.  The early warning first.
                for blocker in blockers:
                    ended.add(blocker, closer)
                _report_orphans(runtime, closer, blockers)
        except Exception:
            internal_error("trio exit hook")
            return original_close(scope, exc)
        result = original_close(scope, exc)
        try:
            if isinstance(result, RuntimeError) and result is not exc:
                facts = Facts(
                    signal=semconv.VIOLATION_SPAN,
                    backend=BACKEND,
                    opener=described,
                    record=record,
                    closer=describe(closer),
                    closer_raw=closer_raw,
                    kind=kind,
                    closer_is_finalizer=_is_finalizer(closer),
                    siblings=kind == semconv.KIND_WRONG_TASK
                    and (
                        _siblings(opener, closer)
                        if opener is not None
                        else ended.siblings(scope, closer)
                    ),
                    message=str(result),
                    group=_task_group_view(scope, opener) if opener is not None else (None, ()),
                    closer_context=var.get(None),
                    scope_key=scope_key(scope, record[_record.TIME] if record else None),
                )
                if blockers:
                    facts.blocker = (describe(closer)[0], _record.lookup(records, blockers[0]))
                    facts.blocker_count = len(blockers)
                facts.incident_id = runtime.reporter.incidents.for_violation(
                    scope, closer, closer_raw, blockers, result
                )
                runtime.reporter.report(facts, result)
        except Exception:
            internal_error("trio exit hook")
        return result

    @protect
    @functools.wraps(original_enter)
    def __enter__(self: Any) -> Any:
        result = original_enter(self)
        try:
            records[id(self)] = capture(var, depth, self, current_task())
            if len(records) > cap:
                evict()
        except Exception:
            internal_error("trio enter hook")
        return result

    @functools.wraps(original_close)
    def _close(self: Any, exc: Any) -> Any:
        try:
            status = self._cancel_status
            if status is not None:
                closer = current_task()
                if closer._cancel_status is not status and not status.abandoned_by_misnesting:
                    return refused_close(self, exc, closer, status)
        except Exception:
            internal_error("trio exit hook")
        records.pop(id(self), None)
        return original_close(self, exc)

    cls.__enter__ = __enter__
    cls._close = _close
    unpatch_task_exit = _patch_task_exit(module, runtime, ended)

    def unpatch() -> None:
        unpatch_task_exit()
        if cls.__dict__.get("__enter__") is __enter__:
            cls.__enter__ = original_enter
        if cls.__dict__.get("_close") is _close:
            cls._close = original_close

    return unpatch


def describe(task: Any) -> TaskDescription:
    if task is None:
        return "<unknown task>", 0, UNKNOWN_COROUTINE, None
    try:
        coro = task.coro
        running: bool | None = getattr(coro, "cr_frame", None) is not None
    except Exception:
        coro, running = None, None
    try:
        name = str(task.name)
    except Exception:
        name = "<unnamed>"
    return name, id(task), coroutine_name(coro), running


def _is_finalizer(task: Any) -> bool:
    try:
        return str(task.name).startswith("close asyncgen ") or "_finalize_one" in (
            coroutine_name(task.coro)
        )
    except Exception:
        return False


def _siblings(opener: Any, closer: Any) -> bool:
    try:
        parent = opener.parent_nursery
        return parent is not None and parent is closer.parent_nursery
    except Exception:
        return False


def _task_group_view(scope: Any, host: Any) -> tuple[str | None, tuple[str, ...]]:
    try:
        for nursery in host.child_nurseries:
            if nursery.cancel_scope is scope:
                names = tuple(sorted(str(t.name) for t in nursery.child_tasks))
                return describe(host)[0], names
    except Exception:
        pass
    return None, ()


def _open_inside(task: Any, status: Any, records: dict[int, Any]) -> list[Any]:
    """Scopes ``task`` entered inside ``status``'s scope and left open, innermost first."""
    found = []
    inner = task._cancel_status
    while inner is not None and inner is not status:
        scope = inner._scope
        if _record.task_of(_record.lookup(records, scope)) is task:
            found.append(scope)
        inner = inner.parent
    return found if inner is status else []


def open_scopes(task: Any, records: dict[int, Any]) -> list[Any]:
    """Scopes ``task`` entered and left open, innermost first: the inner end of
    its cancel status chain, as long as our records name it as the opener."""
    found = []
    status = task._cancel_status
    while status is not None:
        scope = status._scope
        if _record.task_of(_record.lookup(records, scope)) is not task:
            break
        found.append(scope)
        status = status.parent
    return found


class Ended:
    """The description of tasks that ended with scopes open, by scope: bounded,
    and tied to each scope by a weak reference."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        #: id(scope) -> (ref(scope), description, ref(the task's parent nursery))
        self._by_scope: OrderedDict[int, tuple[Any, TaskDescription, Any]] = OrderedDict()

    def add(self, scope: Any, task: Any) -> None:
        name, task_id, coroutine, _ = describe(task)
        try:
            nursery = weakref.ref(task.parent_nursery) if task.parent_nursery is not None else None
        except Exception:
            nursery = None
        with self._lock:
            self._by_scope[id(scope)] = (
                weakref.ref(scope),
                (name, task_id, coroutine, False),
                nursery,
            )
            while len(self._by_scope) > self._size:
                self._by_scope.popitem(last=False)

    def _entry(self, scope: Any) -> tuple[Any, TaskDescription, Any] | None:
        with self._lock:
            entry = self._by_scope.get(id(scope))
        return entry if entry is not None and entry[0]() is scope else None

    def get(self, scope: Any) -> TaskDescription:
        entry = self._entry(scope)
        return entry[1] if entry is not None else describe(None)

    def siblings(self, scope: Any, closer: Any) -> bool:
        """Whether the ended opener of ``scope`` was a child of ``closer``'s nursery."""
        entry = self._entry(scope)
        nursery = entry[2]() if entry is not None and entry[2] is not None else None
        try:
            return nursery is not None and nursery is closer.parent_nursery
        except Exception:
            return False


def _patch_task_exit(module: Any, runtime: Runtime, ended: Ended) -> Callable[[], None]:
    """Check each trio task as it exits, before trio forgets its cancel status."""
    runner_cls = module._core._run.Runner
    original = runner_cls.__dict__["task_exited"]
    records = runtime.records
    internal_error = runtime.internal_error

    def task_exited(self: Any, task: Any, outcome: Any) -> Any:
        try:
            status = task._cancel_status
            # Fast exit: the innermost scope is not one this task entered.
            if (
                status is not None
                and _record.task_of(_record.lookup(records, status._scope)) is task
            ):
                scopes = open_scopes(task, records)
                if scopes:
                    for scope in scopes:
                        ended.add(scope, task)
                    _report_orphans(runtime, task, scopes)
        except Exception:
            internal_error("trio task exit hook")
        return original(self, task, outcome)

    runner_cls.task_exited = task_exited

    def unpatch() -> None:
        if runner_cls.__dict__.get("task_exited") is task_exited:
            runner_cls.task_exited = original

    return unpatch


def _report_orphans(runtime: Runtime, task: Any, scopes: list[Any]) -> None:
    name, task_id, coroutine, _ = describe(task)
    incident = runtime.reporter.incidents.for_orphans(scopes)
    for scope in scopes:
        record = _record.lookup(runtime.records, scope)
        runtime.reporter.report(
            Facts(
                signal=semconv.ORPHANED_SPAN,
                backend=BACKEND,
                opener=(name, task_id, coroutine, False),
                record=record,
                group=_task_group_view(scope, task),
                scope_key=scope_key(scope, record[_record.TIME] if record else None),
                incident_id=incident,
            )
        )
