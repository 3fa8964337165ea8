"""Report: one shape for everything scopetrace tells, and every way it is told.

A :class:`Report` is a violation (a scope exited by the wrong task, or out of
nesting order) or an orphan warning (a task ended with a scope it entered
still open).  Both backends build them (:mod:`scopetrace._diagnosis`), the
:class:`~scopetrace._reporter.Reporter` takes them to every sink, and every
sink reads the same fields: the attributes of spans, events, log records and
jsonl lines come from :meth:`Report.attributes`, every text from the methods
below.  All strings in a report are already clean (:mod:`scopetrace._text`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import semconv
from ._causes import EXPLANATIONS, ORPHAN_EXPLANATION
from ._stacks import Frame


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One side of a report: the task that entered the scope, or the one that exited it."""

    name: str
    id: int
    coroutine: str
    #: ``path:line in function`` of the innermost frame outside anyio, asyncio,
    #: trio and contextlib: where the scope was entered (or exited).
    site: str
    stacktrace: str
    #: Whether the task was still running at the time (None when unknown).
    running: bool | None = None
    frames: tuple[Frame, ...] = ()

    @property
    def state(self) -> str:
        return {True: "still running", False: "finished", None: "state unknown"}[self.running]


@dataclasses.dataclass(frozen=True)
class Culprit:
    """The code to fix: the frame whose code split the scope's lifetime across
    tasks (or left it open), with the distribution that installed it."""

    frame: Frame
    #: Why this frame, in words (see :mod:`scopetrace._culprit`).
    reason: str
    #: Distribution and version, for code installed in a site directory; None
    #: for the application's own code.  Filled off the event loop's thread.
    package: str | None = None
    version: str | None = None

    @property
    def site(self) -> str:
        return str(self.frame)

    def describe(self) -> str:
        if self.package is None:
            return self.site
        return f"{self.site} ({self.package} {self.version})"


@dataclasses.dataclass(frozen=True)
class Blocker:
    """For ``not_innermost``: the scope in the way -- entered after the exited
    one by the same task, and still open."""

    task_name: str
    site: str
    stacktrace: str
    #: How many scopes entered after the exited one are still open.
    count: int
    frames: tuple[Frame, ...] = ()


@dataclasses.dataclass(frozen=True)
class Fixture:
    """The test fixture whose setup and teardown ran in different tasks."""

    name: str
    #: ``pytest-asyncio`` or ``anyio`` (the plugin that ran it).
    runner: str


@dataclasses.dataclass(frozen=True)
class Report:
    """A violation or an orphan warning, as every sink receives it."""

    #: :data:`semconv.VIOLATION_SPAN` or :data:`semconv.ORPHANED_SPAN`.
    signal: str
    backend: str
    opener: TaskInfo
    #: The task that exited the scope (None for an orphan warning).
    closer: TaskInfo | None
    #: ``wrong_task``/``not_innermost`` (violations only).
    kind: str | None
    #: The likely cause (violations only; see ``semconv.CAUSES``).
    cause: str | None
    #: anyio's (or trio's) own error message; empty for an orphan warning.
    message: str
    #: When the scope was entered and when this was reported, in ns since the epoch.
    entered_at_ns: int | None
    reported_at_ns: int
    thread_id: int
    thread_name: str
    #: For task-group scopes: the host task and the child tasks alive at the time.
    task_group_host: str | None = None
    task_group_children: tuple[str, ...] = ()
    culprit: Culprit | None = None
    blocker: Blocker | None = None
    fixture: Fixture | None = None
    #: Shared by every report of one failure (see :mod:`scopetrace._incidents`).
    incident_id: str = ""
    #: Filled by the advisor when the culprit is a known upstream bug.
    advice: str | None = None
    #: Identifies the scope among the reports of its incident (an orphan
    #: warning and the violation of the same scope share it).
    scope_key: str = dataclasses.field(default="", repr=False, compare=False)
    #: The OTel context current when the scope was entered / exited.
    opener_context: Any = dataclasses.field(default=None, repr=False, compare=False)
    closer_context: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_violation(self) -> bool:
        return self.signal == semconv.VIOLATION_SPAN

    @property
    def explanation(self) -> str:
        """The likely cause in words, with the usual fix."""
        if not self.is_violation:
            return ORPHAN_EXPLANATION
        if self.cause == semconv.CAUSE_MISNESTED and self.blocker is not None:
            return EXPLANATIONS["misnested_blocked"]
        return EXPLANATIONS.get(self.cause or "", self.cause or "")

    # -- structured -------------------------------------------------------------
    def attributes(self) -> dict[str, Any]:
        """Span, event, log and jsonl attributes, keyed by :mod:`scopetrace.semconv`."""
        attrs: dict[str, Any] = {}
        if self.is_violation:
            attrs[semconv.VIOLATION_KIND] = self.kind
            attrs[semconv.VIOLATION_CAUSE] = self.cause
        attrs[semconv.BACKEND] = self.backend
        attrs[semconv.INCIDENT_ID] = self.incident_id
        if self.culprit is not None:
            attrs[semconv.CULPRIT_SITE] = self.culprit.site
            attrs[semconv.CULPRIT_REASON] = self.culprit.reason
            if self.culprit.package is not None:
                attrs[semconv.CULPRIT_PACKAGE] = self.culprit.package
                attrs[semconv.CULPRIT_PACKAGE_VERSION] = self.culprit.version
        attrs.update(_side(self.opener, _OPENER_KEYS))
        if self.opener.running is not None:
            attrs[semconv.OPENER_RUNNING] = self.opener.running
        if self.closer is not None:
            attrs.update(_side(self.closer, _CLOSER_KEYS))
            frame = _first_user_frame(self.closer.frames)
            if frame is not None:
                attrs[semconv.CODE_FILEPATH] = frame.filename
                attrs[semconv.CODE_LINENO] = frame.lineno
                attrs[semconv.CODE_FUNCTION] = frame.function
        if self.blocker is not None:
            attrs[semconv.BLOCKER_SITE] = self.blocker.site
            attrs[semconv.BLOCKER_STACKTRACE] = self.blocker.stacktrace
            attrs[semconv.BLOCKER_TASK_NAME] = self.blocker.task_name
            attrs[semconv.BLOCKER_COUNT] = self.blocker.count
        if self.fixture is not None:
            attrs[semconv.FIXTURE_NAME] = self.fixture.name
            attrs[semconv.FIXTURE_RUNNER] = self.fixture.runner
        if self.task_group_host is not None:
            attrs[semconv.TASK_GROUP_HOST] = self.task_group_host
            attrs[semconv.TASK_GROUP_CHILDREN] = list(self.task_group_children)
        if self.advice:
            attrs[semconv.ADVICE] = self.advice
        attrs[semconv.THREAD_ID] = self.thread_id
        attrs[semconv.THREAD_NAME] = self.thread_name
        return attrs

    def metric_attributes(self) -> dict[str, str]:
        """The counter's attributes (``semconv.METRIC_ATTRIBUTES`` for violations,
        ``semconv.ORPHANED_METRIC_ATTRIBUTES`` for orphans): low-cardinality
        only.  The culprit's package is empty for the application's own code."""
        culprit = self.culprit
        attrs = {
            semconv.BACKEND: self.backend,
            semconv.OPENER_SITE: self.opener.site,
            semconv.CULPRIT_PACKAGE: (culprit.package or "") if culprit else "",
            semconv.CULPRIT_PACKAGE_VERSION: (culprit.version or "") if culprit else "",
        }
        if self.is_violation:
            attrs[semconv.VIOLATION_KIND] = self.kind or ""
            attrs[semconv.VIOLATION_CAUSE] = self.cause or ""
        return attrs

    def rate_key(self) -> tuple[str, ...]:
        """What a storm repeats: the same failure at the same two sites."""
        closer_site = self.closer.site if self.closer is not None else ""
        return (self.signal, self.kind or "", self.cause or "", self.opener.site, closer_site)

    # -- text -------------------------------------------------------------------
    def headline(self) -> str:
        if self.is_violation:
            return f"anyio cancel scope violation: {self.kind} ({self.cause})"
        return "anyio cancel scope orphaned (early warning)"

    def summary(self) -> str:
        """One line, leading with the code to fix."""
        lead = f"{self.headline()}: "
        if self.culprit is not None:
            lead += f"fix {self.culprit.describe()}; "
        if self.closer is None:
            return (
                f"{lead}task {self.opener.name!r} ended with the scope it entered at "
                f"{self.opener.site} still open"
            )
        text = (
            f"{lead}entered in task {self.opener.name!r} at {self.opener.site}, "
            f"exited in task {self.closer.name!r} at {self.closer.site}"
        )
        if self.blocker is not None:
            text += f", while the scope entered at {self.blocker.site} was still open"
        return text

    def note(self) -> str:
        """The note added to anyio's RuntimeError."""
        closer = self.closer
        assert closer is not None, "only violations carry a note"
        parts = [f"scopetrace: {self.kind} ({self.cause})"]
        if self.culprit is not None:
            parts.append(f"fix {self.culprit.site}")
        parts.append(
            f"scope entered in task {self.opener.name!r} (id {self.opener.id}, "
            f"{self.opener.coroutine}, {self.opener.state}) at {self.opener.site}"
        )
        parts.append(
            f"exited in task {closer.name!r} (id {closer.id}, {closer.coroutine}) at {closer.site}"
        )
        if self.blocker is not None:
            parts.append(
                f"still open inside it: the scope entered at {self.blocker.site} "
                f"in task {self.blocker.task_name!r}"
            )
        if self.fixture is not None:
            parts.append(f"fixture {self.fixture.name!r} ({self.fixture.runner})")
        return "; ".join(parts)

    def format(self) -> str:
        """The full human-readable report."""
        lines = [f"scopetrace: {self.headline()} [incident {self.incident_id}]"]
        if self.culprit is not None:
            lines.append(f"  fix:        {self.culprit.describe()}")
            lines.append(f"              ({self.culprit.reason})")
        if self.advice:
            lines.append(f"  advice:     {self.advice}")
        if self.message:
            lines.append(f"  error:      RuntimeError: {self.message.splitlines()[0]}")
        lines.append(f"  backend:    {self.backend}, thread {self.thread_name!r}")
        opener_state = "finished" if self.closer is None else self.opener.state
        lines.append(
            f"  entered by: task {self.opener.name!r} (id {self.opener.id}) running "
            f"{self.opener.coroutine} [{opener_state}]"
        )
        lines.append(f"              at {self.opener.site}")
        if self.closer is not None:
            lines.append(
                f"  exited by:  task {self.closer.name!r} (id {self.closer.id}) running "
                f"{self.closer.coroutine}"
            )
            lines.append(f"              at {self.closer.site}")
        if self.blocker is not None:
            others = self.blocker.count - 1
            more = f" (and {others} more inside it)" if others > 0 else ""
            lines.append(
                f"  in the way: the scope entered at {self.blocker.site} by task "
                f"{self.blocker.task_name!r}, still open{more}"
            )
        if self.fixture is not None:
            lines.append(
                f"  fixture:    {self.fixture.name!r} ({self.fixture.runner}): setup and "
                "teardown ran in different tasks"
            )
        if self.task_group_host is not None:
            lines.append(
                f"  task group: host {self.task_group_host}; children "
                f"{', '.join(self.task_group_children) or '(none alive)'}"
            )
        lines.append(f"  likely cause: {self.explanation}")
        lines.append("  entering stack (most recent call last):")
        lines.append(_indent(self.opener.stacktrace))
        if self.blocker is not None:
            lines.append("  stack that entered the scope in the way (most recent call last):")
            lines.append(_indent(self.blocker.stacktrace))
        if self.closer is not None:
            lines.append("  exiting stack (most recent call last):")
            lines.append(_indent(self.closer.stacktrace))
        return "\n".join(lines)

    def brief(self) -> str:
        """Two lines for a report that is not the first of its incident."""
        if self.closer is None:
            return (
                f"  also: orphaned (early warning): task {self.opener.name!r} ended with "
                f"the scope it entered at {self.opener.site} still open"
            )
        return (
            f"  also: {self.kind} ({self.cause}): the scope entered at {self.opener.site} "
            f"by task {self.opener.name!r},\n        exited at {self.closer.site} by task "
            f"{self.closer.name!r}"
        )


_OPENER_KEYS = (
    semconv.OPENER_TASK_NAME,
    semconv.OPENER_TASK_ID,
    semconv.OPENER_TASK_COROUTINE,
    semconv.OPENER_STACKTRACE,
    semconv.OPENER_SITE,
)
_CLOSER_KEYS = (
    semconv.CLOSER_TASK_NAME,
    semconv.CLOSER_TASK_ID,
    semconv.CLOSER_TASK_COROUTINE,
    semconv.CLOSER_STACKTRACE,
    semconv.CLOSER_SITE,
)


def _side(info: TaskInfo, keys: tuple[str, ...]) -> dict[str, Any]:
    values = (info.name, info.id, info.coroutine, info.stacktrace, info.site)
    return dict(zip(keys, values, strict=True))


def _first_user_frame(frames: tuple[Frame, ...]) -> Frame | None:
    from ._stacks import first_outside_plumbing

    return first_outside_plumbing(frames)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines()) or "    <not recorded>"


def format_incident(reports: list[Report]) -> str:
    """One block for the reports of one incident: the first in full (a violation
    if there is one), the others in brief."""
    primary = primary_of(reports)
    others = [r for r in reports if r is not primary]
    text = primary.format()
    if others:
        text += f"\n  {len(others)} more report(s) of this incident:\n" + "\n".join(
            r.brief() for r in others
        )
    return text


def primary_of(reports: list[Report]) -> Report:
    """The report an incident is told by: its first violation, else its first report."""
    for report in reports:
        if report.is_violation:
            return report
    return reports[0]
