"""Diagnosis: from what a backend saw to a :class:`~scopetrace._report.Report`.

A backend only detects and describes: when anyio (or trio) refuses an exit,
or a task ends with a scope open, it fills a :class:`Facts` with what it can
read at that moment -- both tasks, both raw stacks, the scope in the way --
and calls :func:`diagnose`.  Everything else is decided here, from those
facts alone: the cause, the culprit, the fixture, the texts.

Runs on the thread that saw the violation, before anyio raises, so it stays
cheap: no imports, no file reads (the culprit's package and the advice are
filled later, off that thread, by :func:`enrich`).  It never keeps frames:
the raw stacks are code objects and integers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from . import _culprit, _fixtures, _packages, _record, semconv
from ._causes import classify
from ._report import Blocker, Report, TaskInfo
from ._stacks import format_stack, frames_of, site_of
from ._text import cap, clean, clean_block

#: (name, id, coroutine, running) of a task, as a backend describes it.
TaskDescription = tuple[str, int, str, "bool | None"]

NO_TASK: TaskDescription = ("<no task>", 0, "<none>", None)
UNKNOWN_COROUTINE = "<unknown>"


def coroutine_name(coro: object) -> str:
    """The coroutine's qualified name, never its repr (which may show arguments)."""
    if coro is None:
        return UNKNOWN_COROUTINE
    try:
        name = getattr(coro, "__qualname__", None)
    except Exception:  # a hostile awaitable must not break the report
        name = None
    return name if isinstance(name, str) else type(coro).__name__


@dataclasses.dataclass
class Facts:
    """What a backend saw, gathered at the moment it happened."""

    signal: str
    backend: str
    opener: TaskDescription
    #: The entering record of the scope (None: entered before install, or evicted).
    record: _record.Record | None
    closer: TaskDescription | None = None
    closer_raw: tuple[Any, ...] = ()
    #: ``wrong_task``/``not_innermost``, for a violation.
    kind: str | None = None
    closer_is_finalizer: bool = False
    siblings: bool = False
    message: str = ""
    #: (host task name, child task names) for a task group's scope.
    group: tuple[str | None, tuple[str, ...]] = (None, ())
    closer_context: Any = None
    #: For not_innermost: (task name, record) of the innermost scope in the
    #: way, and how many there are.
    blocker: tuple[str, _record.Record | None] | None = None
    blocker_count: int = 0
    #: Identifies the scope among the reports of an incident.
    scope_key: str = ""
    incident_id: str = ""


def side(description: TaskDescription, raw: tuple[Any, ...] | None) -> TaskInfo:
    """A :class:`TaskInfo` from a task's description and a raw stack."""
    name, task_id, coroutine, running = description
    name, coroutine = cap(clean(name)), cap(clean(coroutine))
    if not raw:
        return TaskInfo(name, task_id, coroutine, "<not recorded>", "", running)
    frames = frames_of(raw)
    if coroutine == UNKNOWN_COROUTINE and frames and frames[-1].flags & 0x80:
        # The outermost frame of a task's stack is its coroutine (an eager
        # task's stack goes on into its parent's, so this is a best guess).
        coroutine = frames[-1].function
    return TaskInfo(
        name, task_id, coroutine, site_of(frames), format_stack(frames), running, frames
    )


def diagnose(facts: Facts) -> Report:
    """The report of what a backend saw (cheap; never imports or reads files)."""
    opener = side(facts.opener, _record.frames(facts.record))
    closer = side(facts.closer, facts.closer_raw) if facts.closer is not None else None
    blocker = None
    if facts.blocker is not None:
        task_name, record = facts.blocker
        frames = frames_of(_record.frames(record))
        blocker = Blocker(
            cap(clean(task_name)),
            site_of(frames) if frames else "<not recorded>",
            format_stack(frames),
            facts.blocker_count,
            frames,
        )
    fixture = _fixtures.find(opener.frames, closer.frames if closer else ())
    kind = facts.kind
    cause = None
    if kind is not None:
        cause = classify(
            kind,
            facts.closer_is_finalizer,
            opener.running,
            facts.siblings,
            fixture=fixture is not None,
        )
    culprit = _culprit.find(
        opener.frames,
        closer.frames if closer is not None else None,
        blocker.frames if blocker is not None else None,
        fixture,
        same_task=kind == semconv.KIND_NOT_INNERMOST,
    )
    thread = threading.current_thread()
    record = facts.record
    return Report(
        signal=facts.signal,
        backend=facts.backend,
        opener=opener,
        closer=closer,
        kind=kind,
        cause=cause,
        message=clean_block(facts.message),
        entered_at_ns=record[_record.TIME] if record else None,
        reported_at_ns=time.time_ns(),
        thread_id=threading.get_ident(),
        thread_name=cap(clean(thread.name)),
        task_group_host=cap(clean(facts.group[0])) if facts.group[0] is not None else None,
        task_group_children=tuple(cap(clean(name)) for name in facts.group[1]),
        culprit=culprit,
        blocker=blocker,
        fixture=fixture,
        incident_id=facts.incident_id,
        scope_key=facts.scope_key,
        opener_context=record[_record.CONTEXT] if record else None,
        closer_context=facts.closer_context,
    )


def enrich(report: Report) -> Report:
    """The culprit's distribution and version, and the advice: filled off the
    event loop's thread, where reading installed metadata costs nobody."""
    from ._advisor import advise

    culprit = report.culprit
    if culprit is not None and culprit.package is None:
        dist = _packages.distribution_of(culprit.frame.filename)
        if dist is not None:
            culprit = dataclasses.replace(
                culprit, package=clean(dist.name), version=clean(dist.version)
            )
            report = dataclasses.replace(report, culprit=culprit)
    advice = advise(report)
    if advice:
        report = dataclasses.replace(report, advice=advice)
    return report
