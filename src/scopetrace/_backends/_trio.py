"""trio backend: hooks on ``trio.CancelScope``.

anyio's trio ``CancelScope`` only wraps a ``trio.CancelScope``, and anyio task
groups are trio nurseries, whose scopes trio closes through
``CancelScope._close()`` rather than ``__exit__``.  So the hooks sit on trio's
own class: ``__enter__`` records, ``_close`` (the path both ``__exit__`` and
nurseries take) detects.  trio does not raise from ``_close``; it *returns*
the error to raise, so the note goes on the returned exception.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable

from .. import semconv
from .._capture import live_stack, stop_at_loop_frame
from .._orphans import Orphans, patch_trio_task_exit
from .._runtime import Runtime
from .._violation import (
    Violation,
    assemble,
    coroutine_name,
)

MODULE = "trio"
BACKEND = "trio"


def patch(module: ModuleType, runtime: Runtime) -> Callable[[], None]:
    cls = module.CancelScope
    current_task = module.lowlevel.current_task
    protect = module.lowlevel.enable_ki_protection
    stop_at_loop_frame(module._core._run.unrolled_run.__code__)
    original_enter = cls.__dict__["__enter__"]
    original_close = cls.__dict__["_close"]
    records = runtime.records
    capture = runtime.capture
    var = runtime.context_var
    depth = runtime.options.stack_depth
    cap = runtime.options.max_open_scopes
    evict = runtime.evict
    internal_error = runtime.internal_error

    def refused_close(scope: Any, exc: Any, closer: Any, status: Any) -> Any:
        # Called by _close only: two frames up is the code that exited.
        entry = records.pop(id(scope), None)
        try:
            closer_raw = live_stack(max(depth, 8), skip=2)
            record, opener = entry if entry is not None else (None, None)
            if opener is not None:
                kind = (
                    semconv.KIND_NOT_INNERMOST if opener is closer else semconv.KIND_WRONG_TASK
                )
            elif status.encloses(closer._cancel_status):
                kind = semconv.KIND_NOT_INNERMOST
            else:
                kind = semconv.KIND_WRONG_TASK
        except Exception:
            internal_error("trio exit hook")
            return original_close(scope, exc)
        result = original_close(scope, exc)
        try:
            if isinstance(result, RuntimeError) and result is not exc:
                violation = _build(kind, scope, opener, closer, record, closer_raw, result, runtime)
                runtime.reporter.handle(violation, result)
        except Exception:
            internal_error("trio exit hook")
        return result

    @protect
    @functools.wraps(original_enter)
    def __enter__(self: Any) -> Any:
        result = original_enter(self)
        try:
            records[id(self)] = (capture(var, depth), current_task())
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
    # Orphans are found at task exit, off the enter/exit path.
    unpatch_task_exit = patch_trio_task_exit(
        module, runtime, Orphans(runtime, BACKEND), _describe, _task_group_view
    )

    def unpatch() -> None:
        unpatch_task_exit()
        if cls.__dict__.get("__enter__") is __enter__:
            cls.__enter__ = original_enter
        if cls.__dict__.get("_close") is _close:
            cls._close = original_close

    return unpatch


def _describe(task: Any) -> tuple[str, int, str, bool | None]:
    if task is None:
        return "<unknown task>", 0, "<unknown>", None
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
                return _describe(host)[0], names
    except Exception:
        pass
    return None, ()


def _build(
    kind: str,
    scope: Any,
    opener: Any,
    closer: Any,
    record: tuple[Any, ...] | None,
    closer_raw: tuple[Any, ...],
    exc: BaseException,
    runtime: Runtime,
) -> Violation:
    return assemble(
        kind=kind,
        backend=BACKEND,
        opener=_describe(opener),
        closer=_describe(closer),
        closer_is_finalizer=_is_finalizer(closer),
        siblings=kind == semconv.KIND_WRONG_TASK and opener is not None and _siblings(opener, closer),
        record=record,
        closer_raw=closer_raw,
        exc=exc,
        group=_task_group_view(scope, opener) if opener is not None else (None, ()),
        closer_context=runtime.context_var.get(None),
    )
