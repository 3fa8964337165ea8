"""asyncio backend: hooks on ``anyio._backends._asyncio.CancelScope``.

anyio keeps the entering task in ``scope._host_task`` and refuses a bad exit
*before* changing any state, so the exit hook adds nothing to a clean exit but
one dict pop: it only looks at the scope once anyio has raised, and describes
what it finds from that untouched state (never from the message text).

Orphans: the enter hook arms a done-callback on a plain task (``gather()``
children, ``create_task``) at its top-level scope, and the callback walks
anyio's scope chain when the task ends; the exit hook disarms it when that
scope exits cleanly (see :class:`Watcher`).  Task-group children need no
callback: on anyio < 4.14 they are armed like plain tasks; from 4.14 anyio
runs each child inside a scope of its own, whose exit anyio refuses when the
child left a scope open -- the exit hook then reports the orphan and the
violation together, at no cost on the hot path.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
import threading
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .. import _record, semconv
from .._diagnosis import NO_TASK, UNKNOWN_COROUTINE, Facts, TaskDescription, coroutine_name
from .._incidents import scope_key
from .._runtime import Runtime
from .._stacks import frames_of, is_task_group_child_wrapper

MODULE = "anyio._backends._asyncio"
BACKEND = "asyncio"

_FINALIZER_COROUTINES = ("async_generator_athrow", "async_generator_asend")

# CPython 3.12.0-3.12.4 crash in Task.get_coro() on a task that completed
# eagerly (python/cpython#122332, fixed in 3.12.5).
_GET_CORO_CRASHES = (3, 12) <= sys.version_info[:3] < (3, 12, 5)

#: Closing stacks are recorded at violations only: as deep as allowed.
CLOSER_DEPTH = 128


def _coro_of(task: Any) -> Any:
    if _GET_CORO_CRASHES and task.done():
        return None
    return task.get_coro()


def patch(module: ModuleType, runtime: Runtime, wraps_children: bool) -> Callable[[], None]:
    """Patch ``module.CancelScope``; ``wraps_children``: anyio >= 4.14 runs
    each task-group child inside a scope of its own."""
    cls = module.CancelScope
    task_states = module._task_states
    original_enter = cls.__dict__["__enter__"]
    original_exit = cls.__dict__["__exit__"]
    records = runtime.records
    capture = runtime.capture
    var = runtime.context_var
    depth = runtime.options.stack_depth
    cap = runtime.options.max_open_scopes
    evict = records.evict
    internal_error = runtime.internal_error
    # Where a task's stack ends: asyncio's Handle._run; with loops whose
    # handles are not Python (uvloop), whatever called the loop.
    _record.stop_at_loop_frame(asyncio.events.Handle._run.__code__)
    _record.stop_at_loop_frame(asyncio.base_events.BaseEventLoop.run_until_complete.__code__)
    runner = getattr(asyncio, "Runner", None)  # Python >= 3.11
    if runner is not None:
        _record.stop_at_loop_frame(runner.run.__code__)
    watcher = Watcher(runtime, task_states)
    watch = watcher.watch
    enter_top = watcher.enter_top
    exit_top = watcher.exit_top
    #: Weak reference to the last task armed until its end: a loop of scopes
    #: in one task then costs one identity test per enter and per exit.
    last_watched = watcher.nobody
    watch_children = not wraps_children

    def refused(scope: Any, exc: RuntimeError, skip: int = 2) -> None:
        # Called by __exit__ only: `skip` frames up is the code that exited
        # (two through the Python wrapper; one from the C hook, which has none).
        try:
            host = scope._host_task
            if host is None or not scope._active:
                return  # the scope did exit: this error is not an ownership one
            closer = asyncio.current_task()
            closer_raw = _record.live_stack(CLOSER_DEPTH, skip=skip)
            if closer is not host:
                kind = semconv.KIND_WRONG_TASK
                watcher.before_violation(scope, host)
                blockers: list[Any] = []
            else:
                state = task_states.get(host)
                if state is not None and state.cancel_scope is scope:
                    return
                kind = semconv.KIND_NOT_INNERMOST
                blockers = _open_inside(state, scope, host)
                if wraps_children and _is_child_wrapper(scope, records):
                    # anyio's own scope around a task-group child: the child is
                    # ending with its scopes open.  The early warning first.
                    watcher.report_orphans(host, blockers)
            record = _record.lookup(records, scope)
            facts = Facts(
                signal=semconv.VIOLATION_SPAN,
                backend=BACKEND,
                opener=describe(host),
                record=record,
                closer=describe(closer) if closer is not None else NO_TASK,
                closer_raw=closer_raw,
                kind=kind,
                closer_is_finalizer=closer is not None and _is_finalizer(closer),
                siblings=kind == semconv.KIND_WRONG_TASK and _siblings(host, closer, task_states),
                message=str(exc),
                group=_task_group_view(scope, host),
                closer_context=var.get(None),
                scope_key=scope_key(scope, record[_record.TIME] if record else None),
            )
            if blockers:
                inner = blockers[0]
                facts.blocker = (describe(host)[0], _record.lookup(records, inner))
                facts.blocker_count = len(blockers)
            facts.incident_id = runtime.reporter.incidents.for_violation(
                scope, closer, closer_raw, blockers, exc
            )
            runtime.reporter.report(facts, exc)
        except Exception:
            internal_error("asyncio exit hook")

    hooks = _c_hooks(capture)
    if hooks is not None and not watch_children:
        # The same hooks in C: no Python frame of their own, so the record
        # starts at the code that entered the scope, and a refused exit's
        # closer is one frame up from refused() (a partial adds no frame).
        state = hooks.HookState(
            records,
            var,
            depth,
            cap,
            watcher.enter_top,
            watcher.exit_top,
            evict,
            functools.partial(refused, skip=1),
            internal_error,
        )
        c_enter = functools.update_wrapper(
            hooks.ScopeHook(original_enter, state, False), original_enter
        )
        c_exit = functools.update_wrapper(
            hooks.ScopeHook(original_exit, state, True), original_exit
        )
        return _install(cls, original_enter, original_exit, c_enter, c_exit)

    @functools.wraps(original_enter)
    def __enter__(self: Any) -> Any:
        nonlocal last_watched
        result = original_enter(self)
        try:
            host = self._host_task
            records[id(self)] = capture(var, depth, self, host)
            if len(records) > cap:
                evict()
            # A task's top-level scope (anyio leaves _parent_scope None there:
            # plain tasks, gather() children, create_task): arm the check at
            # its end; task-group children are watched only where anyio has no
            # scope of its own around them (see the module docstring).
            if host is not last_watched():
                parent = self._parent_scope
                if parent is None:
                    armed = enter_top(host)
                    if armed is not None:
                        last_watched = armed
                elif watch_children and parent._host_task is not host:
                    last_watched = watch(host)
        except Exception:
            internal_error("asyncio enter hook")
        return result

    @functools.wraps(original_exit)
    def __exit__(self: Any, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
        host = self._host_task  # anyio clears it on the way out
        try:
            result = original_exit(self, exc_type, exc_val, exc_tb)
        except RuntimeError as exc:
            refused(self, exc)
            raise
        finally:
            # Our frame sits in the traceback of whatever propagates: holding
            # the exception here would make a reference cycle anyio avoids.
            del exc_val, exc_tb
            records.pop(id(self), None)
        # A top-level scope exited cleanly: its task has nothing open, so the
        # check at its end is disarmed (unless armed to the end: the fast path).
        try:
            if self._parent_scope is None and host is not last_watched():
                exit_top(host)
        except Exception:
            internal_error("asyncio exit hook")
        return result

    return _install(cls, original_enter, original_exit, __enter__, __exit__)


def _install(
    cls: Any, original_enter: Any, original_exit: Any, enter: Any, exit_: Any
) -> Callable[[], None]:
    cls.__enter__ = enter
    cls.__exit__ = exit_

    def unpatch() -> None:
        if cls.__dict__.get("__enter__") is enter:
            cls.__enter__ = original_enter
        if cls.__dict__.get("__exit__") is exit_:
            cls.__exit__ = original_exit

    return unpatch


def _c_hooks(capture: Any) -> Any:
    """The accelerator's hooks (``_speedups.ScopeHook``) when the runtime
    records with the accelerator: it passed its self-check at import, and this
    is a GIL build (the hooks share unsynchronised state).  The benchmark
    prices the Python recorder by swapping ``_record.capture`` first."""
    try:
        from .. import _speedups
    except ImportError:
        return None
    if capture is not _speedups.capture:
        return None
    return _speedups if hasattr(_speedups, "ScopeHook") else None


def describe(task: Any) -> TaskDescription:
    if task is None:
        return NO_TASK
    try:
        name = task.get_name()
    except Exception:
        name = "<unnamed>"
    try:
        coro = coroutine_name(_coro_of(task))
    except Exception:
        coro = UNKNOWN_COROUTINE
    try:
        running: bool | None = not task.done()
    except Exception:
        running = None
    return str(name), id(task), coro, running


def _described(task: Any, raw: tuple[Any, Any] | None) -> TaskDescription:
    """The description of an ended task, from the name and coroutine taken
    while it ran (see Watcher._arm)."""
    if raw is None or not isinstance(raw[1], str):
        return describe(task)
    return str(raw[0]), id(task), raw[1], False


def _is_finalizer(task: Any) -> bool:
    try:
        return type(_coro_of(task)).__name__ in _FINALIZER_COROUTINES
    except Exception:
        return False


def _siblings(opener: Any, closer: Any, task_states: Any) -> bool:
    """True when both tasks are children of one anyio task group or one gather()."""
    try:
        a, b = task_states.get(opener), task_states.get(closer)
        if (
            a is not None
            and b is not None
            and a.parent_id is not None
            and a.parent_id == b.parent_id
        ):
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
        for child_scope in getattr(scope, "_child_scopes", ()):
            task = child_scope._host_task
            if task is not None and task is not host:
                children.add(task)
        names = tuple(sorted(describe(t)[0] for t in children if not t.done()))
    except Exception:
        return None, ()
    if not names:
        return None, ()
    return describe(host)[0], names


def _open_inside(state: Any, scope: Any, host: Any) -> list[Any]:
    """The scopes ``host`` entered after ``scope`` and left open, innermost first."""
    found = []
    inner = getattr(state, "cancel_scope", None)
    while inner is not None and inner is not scope:
        if inner._host_task is host and inner._active:
            found.append(inner)
        inner = inner._parent_scope
    return found if inner is scope else []


def _is_child_wrapper(scope: Any, records: dict[int, Any]) -> bool:
    """Whether ``scope`` is the one anyio runs a task-group child in."""
    frames = frames_of(_record.frames(_record.lookup(records, scope)))
    if frames:
        return is_task_group_child_wrapper(frames)
    # Not recorded (stack_depth 0): the wrapper is the child's outermost scope.
    parent = scope._parent_scope
    return parent is not None and parent._host_task is not scope._host_task


def open_scopes(state: Any, task: Any) -> list[Any]:
    """Scopes ``task`` entered and left open, innermost first, from anyio's TaskState."""
    found = []
    scope = getattr(state, "cancel_scope", None)
    while scope is not None:
        if scope._host_task is task and scope._active:
            found.append(scope)
        scope = scope._parent_scope
    return found


class Watcher:
    """Checks a task for open scopes when it ends (the orphan early warning).

    Only a task that ends inside a scope it entered needs the check, and
    asyncio runs each done-callback through ``loop.call_soon`` (a ``Handle``:
    about 10,000 instructions at every task's end, more than the hooks cost a
    request), so the check is armed as late and kept as briefly as the hooks
    can tell:

    * :meth:`enter_top` arms it at a task's top-level scope, and
      :meth:`exit_top` disarms it when that scope exits cleanly: anyio's
      chain for the task is then empty and nothing the task entered is open.
      A task with one top-level scope (a server's request) costs an add and
      a remove of its callback, which never runs.
    * a task that enters a top-level scope again (a loop of scopes: the main
      task, a connection handler) is armed until it ends, and the hooks' fast
      path then skips it: one identity test per scope.
    * :meth:`watch` arms task-group children until they end (anyio < 4.14,
      which deletes their TaskState in its own done-callback, before ours).

    Which of these a task gets changes only what it costs: a task is armed
    whenever one of its scopes is open.  A table keyed by ``id(task)`` holds
    the armed tasks, each entry tied to its task by a weak reference, so a
    task destroyed while pending (its callback never runs) can neither keep
    its entry nor hide a later task that gets its address.  Dead entries are
    swept when the table doubles.
    """

    #: Tasks remembered (weakly) as having exited a top-level scope, at most.
    RECENT = 64

    def __init__(self, runtime: Runtime, task_states: Any) -> None:
        self.runtime = runtime
        self.task_states = task_states
        #: id(task) -> (ref(task), anyio's TaskState, (name, coroutine
        #: qualname) taken while it ran, armed to its end): a task the eager
        #: task factory ran to completion has no coroutine left to name.  Only
        #: the strings are kept: the coroutine itself would keep the frame and
        #: locals of a task destroyed while pending.
        self.watched: dict[int, tuple[Any, Any, tuple[Any, Any] | None, bool]] = {}
        #: id(task) -> ref(task) of tasks disarmed at a top-level exit: if one
        #: enters another top-level scope, it is armed to its end.
        self._recent: dict[int, weakref.ref[Any]] = {}
        self._sweep_at = 1024
        #: id(scope) of orphans the exit hook reported before the callback ran.
        self._early: set[int] = set()
        #: What the enter hook compares tasks with before any task was watched.
        self.nobody = weakref.ref(self)
        self._on_end = self._ended
        #: anyio's TaskState of a task, given a weak reference to it: straight
        #: from the WeakKeyDictionary's own table where it is one (its get()
        #: makes that reference again, in a Python frame, at every request).
        data = getattr(task_states, "data", None)
        self._states_data: dict[Any, Any] | None = (
            data
            if isinstance(task_states, weakref.WeakKeyDictionary) and isinstance(data, dict)
            else None
        )
        #: An empty context for the callbacks, one per thread (a context can
        #: be entered by one thread at a time; a task's callbacks run in its
        #: loop's thread).  By default each callback would hold a copy of the
        #: application's context, and every ContextVar value in it, for as
        #: long as its task lives (anyio's test_run_sync_worker_cyclic_references).
        self._contexts = threading.local()

    def enter_top(self, task: Any) -> weakref.ref[Any] | None:
        """``task`` entered a top-level scope: arm the check at its end.

        Returns a weak reference to the task when it stays armed until it ends
        (the hooks' fast path then skips it), None when :meth:`exit_top` is to
        disarm it.  A task armed already, or disarmed recently, entered a
        top-level scope before: a loop of scopes, armed to its end.
        """
        ref = self._to_the_end(task)
        if ref is not None:
            return ref
        recent = self._recent.pop(id(task), None)
        return self._arm(task, to_the_end=recent is not None and recent() is task)

    def exit_top(self, task: Any) -> None:
        """``task`` exited its top-level scope cleanly: nothing it entered is open."""
        key = id(task)
        entry = self.watched.get(key)
        if entry is None or entry[3] or entry[0]() is not task:
            return
        del self.watched[key]
        task.remove_done_callback(self._on_end)  # never scheduled: it costs nothing more
        recent = self._recent
        if len(recent) >= self.RECENT:
            recent.clear()
        recent[key] = entry[0]

    def watch(self, task: Any) -> weakref.ref[Any]:
        """Check ``task`` for open scopes when it ends; returns a weak reference
        to it for the enter hook's fast path (never a strong one)."""
        ref = self._to_the_end(task) or self._arm(task, to_the_end=True)
        assert ref is not None  # _arm returns it when armed to the end
        return ref

    def _to_the_end(self, task: Any) -> weakref.ref[Any] | None:
        """If ``task`` is armed, keep it armed until it ends; its weak reference."""
        key = id(task)
        entry = self.watched.get(key)
        if entry is None or entry[0]() is not task:
            return None
        if not entry[3]:
            self.watched[key] = (*entry[:3], True)
        ref: weakref.ref[Any] = entry[0]
        return ref

    def _arm(self, task: Any, to_the_end: bool) -> weakref.ref[Any] | None:
        ref = weakref.ref(task)
        # The name now, formatted only if there is a report (a request's task
        # is armed at every request: describe() would cost more than the arming).
        try:
            raw: tuple[Any, Any] | None = (task.get_name(), task.get_coro().__qualname__)
        except Exception:
            raw = None
        # Keep anyio's TaskState: anyio deletes it for task-group children in
        # its own done-callback, which runs before ours.
        data = self._states_data
        state = data.get(ref) if data is not None else self.task_states.get(task)
        self.watched[id(task)] = (ref, state, raw, to_the_end)
        if len(self.watched) > self._sweep_at:
            self._sweep()
        try:
            context = self._contexts.empty
        except AttributeError:
            context = self._contexts.empty = contextvars.Context()
        # One bound method for every task: remove_done_callback() finds it by
        # equality, and no partial is built per task.
        task.add_done_callback(self._on_end, context=context)
        return ref if to_the_end else None

    def _sweep(self) -> None:
        # On a copy: loops in other threads keep inserting (copy() is atomic
        # with the GIL and takes the dict's lock without it; iterating is not).
        for key, entry in self.watched.copy().items():
            if entry[0]() is None:
                self.watched.pop(key, None)
        self._sweep_at = max(1024, 2 * len(self.watched))

    def _ended(self, task: Any) -> None:
        entry = self.watched.pop(id(task), None)
        ours = entry is not None and entry[0]() is task
        state = entry[1] if ours else self.task_states.get(task)  # type: ignore[index]
        described = _described(task, entry[2]) if ours else None  # type: ignore[index]
        try:
            left_open = open_scopes(state, task)
            scopes = [
                s
                for s in left_open
                if _record.lookup(self.runtime.records, s) is not None
                # Entered before install() (no record), or already reported
                # by the exit hook of another task (see before_violation).
                and id(s) not in self._early
            ]
            self._early.difference_update(id(s) for s in left_open)
            if scopes:
                self._report(scopes, task, described)
        except Exception:
            self.runtime.internal_error("asyncio task end check")

    def before_violation(self, scope: Any, host: Any) -> None:
        """Called when a task exits a scope whose opener has ended: done-callbacks
        run a loop step late, so the orphan warning may not be out yet."""
        try:
            entry = self.watched.get(id(host))
            if (
                entry is None
                or entry[0]() is not host
                or not host.done()
                or id(scope) in self._early
            ):
                return
            self._early.add(id(scope))
            self._report([scope], host, _described(host, entry[2]))
        except Exception:
            # The violation report that follows must not be lost with it.
            self.runtime.internal_error("asyncio orphan report")

    def report_orphans(self, task: Any, scopes: list[Any]) -> None:
        """A task-group child is ending with ``scopes`` open (anyio >= 4.14)."""
        try:
            recorded = [s for s in scopes if _record.lookup(self.runtime.records, s) is not None]
            if recorded:
                self._report(recorded, task, None)
        except Exception:
            self.runtime.internal_error("asyncio orphan report")

    def _report(self, scopes: list[Any], task: Any, described: TaskDescription | None) -> None:
        name, task_id, coroutine, _ = described if described is not None else describe(task)
        incident = self.runtime.reporter.incidents.for_orphans(scopes)
        for scope in scopes:
            record = _record.lookup(self.runtime.records, scope)
            host, children = _task_group_view(scope, task)
            facts = Facts(
                signal=semconv.ORPHANED_SPAN,
                backend=BACKEND,
                opener=(name, task_id, coroutine, False),
                record=record,
                # The host is the ended task itself: its name as described while it ran.
                group=(name if host is not None else None, children),
                scope_key=scope_key(scope, record[_record.TIME] if record else None),
                incident_id=incident,
            )
            self.runtime.reporter.report(facts)
