"""Record: who entered a scope, from where, kept until the scope is exited.

One shape on both backends, built on the hot path by :func:`capture` and read
only when something goes wrong::

    (ref(scope), ref(task), time_ns, otel_context, code_0, lasti_0, code_1, lasti_1, ...)

* ``ref(scope)``/``ref(task)``: weak references (or None), so a record never
  keeps the scope or the entering task alive, and can be checked against the
  object it is looked up for (:func:`lookup`): a record whose scope has died
  is stale, whatever now lives at its address.
* ``code_i``/``lasti_i``: code object and last-instruction offset of the i-th
  frame, innermost first, starting at the caller of the patched ``__enter__``.
  No frame object, local or argument is kept: code objects and integers only.
  Text is derived from them later (:mod:`scopetrace._stacks`), for a report.

The C accelerator (``scopetrace._speedups``) builds the same tuple in one
call; the pure-Python fallback below is used when it is not built, and when
the interpreter running it is not the one its private frame walk was checked
against (:func:`_checked_accelerator`).

:class:`Records` is the table of open scopes' records, keyed by ``id(scope)``
and capped: the hot path inserts and pops with plain dict operations (atomic
with or without the GIL); only eviction takes a lock.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from time import time_ns
from types import CodeType
from typing import Any

Record = tuple[Any, ...]

#: Field offsets in a record.
SCOPE, TASK, TIME, CONTEXT = 0, 1, 2, 3
#: Offset of the first frame.
FRAMES_AT = 4

_log = logging.getLogger("scopetrace")


def _ref(obj: object) -> Any:
    if obj is None:
        return None
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


#: Code of the event loops' task-stepping frames: stacks stop there.
_loop_codes: set[CodeType] = set()


def live_stack(depth: int, skip: int = 1) -> tuple[Any, ...]:
    """The current stack as flat ``(code, lasti, ...)`` pairs, innermost first,
    starting ``skip`` frames above the caller (used for closers, off the hot path)."""
    try:
        f: Any = sys._getframe(skip + 1)
    except ValueError:  # fewer frames than skipped: entered from C at the stack's bottom
        return ()
    out: list[Any] = []
    loop_codes = _loop_codes
    while f is not None and depth > 0:
        code = f.f_code
        if code in loop_codes:
            break
        out.append(code)
        out.append(f.f_lasti)
        f = f.f_back
        depth -= 1
    del f
    return tuple(out)


def _py_capture(var: ContextVar[Any], depth: int, scope: object, task: object) -> Record:
    # Skip this function and the patched __enter__ that calls it.
    return (_ref(scope), _ref(task), time_ns(), var.get(None), *live_stack(depth, skip=2))


def _enter(fn: Callable[..., Record], var: ContextVar[Any], probe: object) -> Record:
    """Stands in for a patched ``__enter__`` in the self-check."""
    return fn(var, 8, probe, None)


def _checked_accelerator() -> Callable[[ContextVar[Any], int, object, object], Record] | None:
    """The C recorder, if it is built and agrees with the Python one here.

    Where the C walk reads CPython's private frame structs (3.11 to 3.13), a
    patch release or a special build of the interpreter could lay them out
    differently from the headers it was compiled with: compare one record of
    a known stack, taken by both from the same instruction, and fall back to
    the Python recorder on any difference.
    """
    try:
        from . import _speedups
    except ImportError:  # no compiler at install time, or an unsupported interpreter
        return None
    if sys.hexversion >> 16 != getattr(_speedups, "BUILT_FOR_HEX", 0) >> 16:
        _log.debug("scopetrace: _speedups was built for another Python; using the Python recorder")
        return None
    if not getattr(_speedups, "WALKS_INTERPRETER_FRAMES", 1):
        return _speedups.capture  # the public frame API: nothing private to check

    var: ContextVar[Any] = ContextVar("scopetrace_self_check")

    class Probe:
        pass

    probe = Probe()
    records = [_enter(fn, var, probe) for fn in (_speedups.capture, _py_capture)]
    c_rec, py_rec = records
    same = len(c_rec) == len(py_rec) and all(
        a is b if isinstance(a, CodeType) else a == b
        for a, b in zip(c_rec[FRAMES_AT:], py_rec[FRAMES_AT:], strict=True)
    )
    if not same or c_rec[SCOPE]() is not probe:
        _log.debug(
            "scopetrace: the C frame walk disagrees with this interpreter; "
            "using the Python recorder"
        )
        return None
    return _speedups.capture


def _stop_at_of(accelerated: object) -> Callable[[CodeType], None] | None:
    if accelerated is None:
        return None
    from ._speedups import stop_at

    return stop_at


_accelerated = _checked_accelerator()
_c_stop_at = _stop_at_of(_accelerated)

#: ``capture(contextvar, depth, scope, task) -> Record`` -- the hot-path recorder.
capture: Callable[[ContextVar[Any], int, object, object], Record] = _accelerated or _py_capture
ACCELERATED = _accelerated is not None


def stop_at_loop_frame(code: CodeType) -> None:
    """Make every capture stop at frames running ``code``: an event loop's
    task-stepping function, beyond which every task's stack is the same."""
    _loop_codes.add(code)
    if _c_stop_at is not None:
        _c_stop_at(code)


def frames(record: Record | None) -> tuple[Any, ...]:
    """The flat ``(code, lasti, ...)`` stack of a record (empty for none)."""
    return () if record is None else record[FRAMES_AT:]


def lookup(records: dict[int, Record], scope: object) -> Record | None:
    """The record of ``scope``, if the table holds one that is really its own."""
    record = records.get(id(scope))
    if record is None or record[SCOPE] is None or record[SCOPE]() is not scope:
        return None
    return record


def task_of(record: Record | None) -> Any:
    """The task that entered the scope, while it is alive (None otherwise)."""
    if record is None or record[TASK] is None:
        return None
    return record[TASK]()


class Records(dict):  # type: ignore[type-arg]
    """``id(scope) -> Record`` for scopes entered while installed and not exited.

    A plain dict for the hot path.  Past ``cap`` entries :meth:`evict` drops a
    tenth of the cap: first records whose scope or task has died (nothing can
    report on them any more), then the oldest of the rest.  Eviction works on
    a copy, under a lock, and removes an entry only if it still holds the
    record it chose, so loops in other threads (or without the GIL) can go on
    inserting meanwhile.
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self._lock = threading.Lock()

    def evict(self) -> int:
        """Bring the table well under its cap; returns how many were dropped."""
        if not self._lock.acquire(blocking=False):
            return 0  # another thread is evicting already
        try:
            excess = len(self) - self.cap
            if excess <= 0:
                return 0
            # A tenth of the cap at once: a program that leaks scopes steadily
            # pays for eviction once per many enters, not at every one.
            wanted = excess + self.cap // 10
            snapshot = self.copy()
            dead = [
                (key, rec) for key, rec in snapshot.items() if _dead(rec[SCOPE]) or _dead(rec[TASK])
            ]
            victims = dead[:wanted]
            if len(victims) < wanted:
                chosen = {key for key, _ in victims}
                # Oldest first among the living: insertion order is entry order.
                for key, rec in snapshot.items():
                    if len(victims) >= wanted:
                        break
                    if key not in chosen:
                        victims.append((key, rec))
            dropped = 0
            for key, rec in victims:
                if self.get(key) is rec and self.pop(key, None) is not None:
                    dropped += 1
            return dropped
        finally:
            self._lock.release()


def _dead(ref: Any) -> bool:
    return ref is not None and ref() is None
