"""Incidents: the reports of one failure share an id.

One closing call that unwinds nested scopes (an MCP session's task group
inside its transport's) makes several reports: the orphan warnings when the
entering task ended, then a violation per scope.  They belong together:

* the orphan warnings of one task's end are one incident;
* a violation of a scope joins the incident of that scope (its orphan
  warning, or an earlier misnest it was in the way of);
* a violation in the same closing call as the previous one in that task --
  the outer frames of the closing stack still at the same instructions, less
  than :data:`WINDOW` later -- joins its incident;
* the scopes in the way of a misnest join the misnest's incident.

Scopes and tasks are held by weak reference and the tables are bounded, so
nothing here keeps an object alive or grows with the application.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

from ._stacks import line_of

#: Seconds within which violations of one closing call are grouped.
WINDOW = 1.0
#: Most scopes and tasks remembered (dead scopes' entries go first).
MAX_ENTRIES = 1024


def new_id() -> str:
    """A fresh incident id: 16 hex digits, unique across processes."""
    return os.urandom(8).hex()


def scope_key(scope: object, entered_at_ns: int | None) -> str:
    """Names one scope among the reports of its incident."""
    return f"{id(scope):x}-{entered_at_ns or 0}"


class Incidents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: id(scope) -> (ref(scope), incident id)
        self._scopes: OrderedDict[int, tuple[Any, str]] = OrderedDict()
        #: id(task) -> (ref(task), incident id, closing stack's outer frames, monotonic time)
        self._closings: OrderedDict[int, tuple[Any, str, tuple[Any, ...], float]] = OrderedDict()

    def of_scope(self, scope: object) -> str | None:
        with self._lock:
            entry = self._scopes.get(id(scope))
            if entry is None or entry[0]() is not scope:
                return None
            return entry[1]

    def remember(self, scope: object, incident: str) -> None:
        ref = _ref(scope)
        if ref is None:
            return
        with self._lock:
            self._scopes[id(scope)] = (ref, incident)
            self._scopes.move_to_end(id(scope))
            if len(self._scopes) > MAX_ENTRIES:
                for key, (old, _) in list(self._scopes.items()):
                    if old() is None:
                        del self._scopes[key]
                while len(self._scopes) > MAX_ENTRIES:
                    self._scopes.popitem(last=False)

    def for_violation(
        self,
        scope: object,
        closer: object,
        closer_raw: tuple[Any, ...],
        blockers: list[object],
        exc: BaseException | None = None,
    ) -> str:
        """The incident of a violation of ``scope`` exited by ``closer`` (``exc``:
        anyio's error, raised while handling an earlier one we reported?)."""
        incident = self.of_scope(scope) or _of_context(exc)
        for blocker in blockers:
            # A scope in the way that belongs to an incident already (its
            # orphan warning, or the violation that failed to close it).
            incident = incident or self.of_scope(blocker)
        now = time.monotonic()
        if incident is None:
            with self._lock:
                entry = self._closings.get(id(closer))
            if (
                entry is not None
                and entry[0]() is closer
                and now - entry[3] < WINDOW
                and _same_call(entry[2], closer_raw)
            ):
                incident = entry[1]
        if incident is None:
            incident = new_id()
        self.remember(scope, incident)
        for blocker in blockers:
            self.remember(blocker, incident)
        ref = _ref(closer)
        if ref is not None:
            with self._lock:
                self._closings[id(closer)] = (ref, incident, tuple(closer_raw), now)
                self._closings.move_to_end(id(closer))
                while len(self._closings) > MAX_ENTRIES:
                    self._closings.popitem(last=False)
        return incident

    def for_orphans(self, scopes: list[object]) -> str:
        """The incident of the orphan warnings of one task's end."""
        incident = None
        for scope in scopes:
            incident = incident or self.of_scope(scope)
        incident = incident or new_id()
        for scope in scopes:
            self.remember(scope, incident)
        return incident


def _of_context(exc: BaseException | None) -> str | None:
    """The incident of an earlier violation this one was raised while handling:
    one closing call unwinding nested scopes refuses the inner exit, then the
    outer one with the first error as its ``__context__``."""
    seen = 0
    inner = exc.__context__ if exc is not None else None
    while inner is not None and seen < 8:
        told = getattr(inner, "_scopetrace_report", None)  # see _sinks._sentry.attach
        incident = getattr(getattr(told, "report", None), "incident_id", None)
        if isinstance(incident, str) and incident:
            return incident
        inner = inner.__context__
        seen += 1
    return None


def _ref(obj: object) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


def _same_call(before: tuple[Any, ...], now: tuple[Any, ...]) -> bool:
    """Whether two closing stacks (flat ``(code, lasti, ...)``, innermost first)
    are one call unwinding nested scopes: the outer frames the two share, at
    the same lines, are at least two and at least half of the shorter stack
    (the rest is the inner scopes' own exit frames, which differ).  Lines, not
    instructions: a frame the first refusal's exception went through awaits
    at another instruction of the same statement."""
    a, b = len(before) // 2, len(now) // 2
    shared = 0
    while shared < min(a, b):
        i, j = 2 * (a - shared - 1), 2 * (b - shared - 1)
        code = before[i]
        if code is not now[j] or (
            before[i + 1] != now[j + 1]
            and line_of(code, before[i + 1]) != line_of(code, now[j + 1])
        ):
            break
        shared += 1
    return shared >= 2 and 2 * shared >= min(a, b)
