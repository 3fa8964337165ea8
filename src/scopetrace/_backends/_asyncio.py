"""asyncio backend: hooks on ``anyio._backends._asyncio.CancelScope``.

anyio keeps the entering task in ``scope._host_task`` and refuses a bad exit
*before* changing any state, so the exit hook adds nothing to a clean exit: it
only looks at the scope once anyio has raised, and classifies from that
untouched state (never from the message text).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from types import ModuleType
from typing import Any, Callable

from .. import semconv
from .._capture import live_stack, stop_at_loop_frame
from .._orphans import AsyncioWatcher, Orphans
from .._runtime import Runtime
from .._violation import (
    Violation,
    assemble,
    coroutine_name,
)

MODULE = "anyio._backends._asyncio"
BACKEND = "asyncio"

_FINALIZER_COROUTINES = ("async_generator_athrow", "async_generator_asend")

# CPython 3.12.0-3.12.4 crash in Task.get_coro() on a task that completed
# eagerly (python/cpython#122332, fixed in 3.12.5).
_GET_CORO_CRASHES = (3, 12) <= sys.version_info[:3] < (3, 12, 5)


def _coro_of(task: Any) -> Any:
    if _GET_CORO_CRASHES and task.done():
        return None
    return task.get_coro()


def patch(module: ModuleType, runtime: Runtime) -> Callable[[], None]:
    cls = module.CancelScope
    task_states = module._task_states
    original_enter = cls.__dict__["__enter__"]
    original_exit = cls.__dict__["__exit__"]
    records = runtime.records
    capture = runtime.capture
    var = runtime.context_var
    depth = runtime.options.stack_depth
    cap = runtime.options.max_open_scopes
    evict = runtime.evict
    internal_error = runtime.internal_error
    # Where a task's stack ends: asyncio's Handle._run; with loops whose
    # handles are not Python (uvloop), whatever called the loop.
    stop_at_loop_frame(asyncio.events.Handle._run.__code__)
    stop_at_loop_frame(asyncio.base_events.BaseEventLoop.run_until_complete.__code__)
    if hasattr(asyncio, "Runner"):
        stop_at_loop_frame(asyncio.Runner.run.__code__)
    watch_children = not anyio_wraps_children()
    watcher = AsyncioWatcher(Orphans(runtime, BACKEND), task_states, _describe, _task_group_view)
    watch = watcher.watch
    #: Weak reference to the task watch() last saw: a loop of scopes in one
    #: task then costs one call and one identity test per enter.
    last_watched = watcher.nobody

    def refused(scope: Any, exc: RuntimeError) -> None:
        # Called by __exit__ only: two frames up is the code that exited.
        try:
            host = scope._host_task
            if host is None or not scope._active:
                return  # the scope did exit: this error is not an ownership one
            closer = asyncio.current_task()
            if closer is not host:
                kind = semconv.KIND_WRONG_TASK
                watcher.before_violation(scope, host)
            else:
                state = task_states.get(host)
                if state is not None and state.cancel_scope is scope:
                    return
                kind = semconv.KIND_NOT_INNERMOST
            closer_raw = live_stack(max(depth, 8), skip=2)
            record = records.get(id(scope))
            violation = _build(kind, scope, host, closer, record, closer_raw, exc, task_states, runtime)
            runtime.reporter.handle(violation, exc)
        except Exception:
            internal_error("asyncio exit hook")

    @functools.wraps(original_enter)
    def __enter__(self: Any) -> Any:
        nonlocal last_watched
        result = original_enter(self)
        try:
            records[id(self)] = capture(var, depth)
            if len(records) > cap:
                evict()
            # A task's outermost scope: make sure its end gets checked for
            # scopes left open (watch() registers once per task).  Plain tasks
            # (gather() children, create_task) have no parent scope there.
            # Task-group children are watched only where anyio < 4.14: from
            # 4.14 anyio closes a scope of its own around each child, so a
            # scope a child leaves open is refused there already, and watching
            # every child cost 8% of a task-group fan-out.
            parent = self._parent_scope
            if (
                parent is None or (watch_children and parent._host_task is not self._host_task)
            ) and self._host_task is not last_watched():
                last_watched = watch(self._host_task)
        except Exception:
            internal_error("asyncio enter hook")
        return result

    @functools.wraps(original_exit)
    def __exit__(self: Any, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
        try:
            return original_exit(self, exc_type, exc_val, exc_tb)
        except RuntimeError as exc:
            refused(self, exc)
            raise
        finally:
            # Our frame sits in the traceback of whatever propagates: holding
            # the exception here would make a reference cycle anyio avoids.
            del exc_val, exc_tb
            records.pop(id(self), None)

    cls.__enter__ = __enter__
    cls.__exit__ = __exit__

    def unpatch() -> None:
        if cls.__dict__.get("__enter__") is __enter__:
            cls.__enter__ = original_enter
        if cls.__dict__.get("__exit__") is __exit__:
            cls.__exit__ = original_exit

    return unpatch


def anyio_wraps_children() -> bool:
    """Whether anyio (>= 4.14) runs each task-group child inside its own scope."""
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("anyio").split(".")[:2]) >= (4, 14)
    except Exception:
        return False


def _describe(task: Any) -> tuple[str, int, str, bool | None]:
    try:
        name = task.get_name()
    except Exception:
        name = "<unnamed>"
    try:
        coro = coroutine_name(_coro_of(task))
    except Exception:
        coro = coroutine_name(None)
    try:
        running: bool | None = not task.done()
    except Exception:
        running = None
    return str(name), id(task), coro, running


def _is_finalizer(task: Any) -> bool:
    try:
        return type(_coro_of(task)).__name__ in _FINALIZER_COROUTINES
    except Exception:
        return False


def _siblings(opener: Any, closer: Any, task_states: Any) -> bool:
    """True when both tasks are children of one anyio task group or one gather()."""
    try:
        a, b = task_states.get(opener), task_states.get(closer)
        if a is not None and b is not None and a.parent_id is not None:
            if a.parent_id == b.parent_id:
                return True
    except Exception:
        pass
    # gather() leaves a done-callback on each child that closes over the
    # gathering future, whose _children lists every sibling, finished or not.
    try:
        for entry in getattr(closer, "_callbacks", None) or ():
            callback = entry[0] if isinstance(entry, tuple) else entry
            for cell in getattr(callback, "__closure__", None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:
                    continue
                children = getattr(value, "_children", None)
                if children is None and isinstance(value, list):
                    children = value
                if children and any(child is opener for child in children):
                    return True
    except Exception:
        pass
    return False


def _task_group_view(scope: Any, host: Any) -> tuple[str | None, tuple[str, ...]]:
    """(host task name, names of the child tasks alive) for a task group's
    scope; (None, ()) for a scope no other task runs in."""
    try:
        children = {t for t in scope._tasks if t is not host}
        # anyio >= 4.14 runs each child in a scope of its own, nested in the
        # group's; the child then leaves the group scope's _tasks.
        for child_scope in scope._child_scopes:
            task = child_scope._host_task
            if task is not None and task is not host:
                children.add(task)
        names = tuple(sorted(_describe(t)[0] for t in children if not t.done()))
    except Exception:
        return None, ()
    if not names:
        return None, ()
    return _describe(host)[0], names


def _build(
    kind: str,
    scope: Any,
    host: Any,
    closer: Any,
    record: tuple[Any, ...] | None,
    closer_raw: tuple[Any, ...],
    exc: BaseException,
    task_states: Any,
    runtime: Runtime,
) -> Violation:
    return assemble(
        kind=kind,
        backend=BACKEND,
        opener=_describe(host),
        closer=_describe(closer) if closer is not None else ("<no task>", 0, "<none>", None),
        closer_is_finalizer=closer is not None and _is_finalizer(closer),
        siblings=kind == semconv.KIND_WRONG_TASK and _siblings(host, closer, task_states),
        record=record,
        closer_raw=closer_raw,
        exc=exc,
        group=_task_group_view(scope, host),
        closer_context=runtime.context_var.get(None),
    )
