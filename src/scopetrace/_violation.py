"""Violation: what went wrong, between which tasks, and the likely cause.

Everything here runs only after anyio (or trio) refused an exit, so it may be
slow; it must still never raise (callers wrap it) and never keep frames.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

from . import semconv
from ._capture import FRAMES_AT, Frame, format_stack, frames_of, is_library, site_of

CAUSE_EXPLANATIONS: dict[str, str] = {
    semconv.CAUSE_ASYNCGEN_FINALIZER: (
        "an async generator that entered the scope was closed by the event loop's "
        "async-generator finalizer (aclose()/athrow in a task of its own), not by the "
        "task that iterated it; close it explicitly (contextlib.aclosing) in the "
        "owning task, or keep task groups out of async generators"
    ),
    semconv.CAUSE_SIBLING_TASK: (
        "another task sharing the resource (a sibling in the same gather()/task group, "
        "or any concurrent task) closed the scope its opener entered; give the scope a "
        "dedicated owner task that both enters and exits it"
    ),
    semconv.CAUSE_OPENER_FINISHED: (
        "the task that entered the scope had already finished, leaving the scope open "
        "for a later task to close; enter and exit the scope in one task (e.g. an "
        "owner task or a lifespan), never in separate setup/teardown tasks"
    ),
    semconv.CAUSE_MISNESTED: (
        "the task exited this scope while a scope it entered later was still open; "
        "exit scopes in the reverse order they were entered (async with blocks, not "
        "manual __aenter__/__aexit__ calls)"
    ),
}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One side of a violation: the task that entered or the one that exited."""

    name: str
    id: int
    coroutine: str
    site: str
    stacktrace: str
    #: Whether the task was still running when the violation happened
    #: (None when unknown).
    running: bool | None = None
    frames: tuple[Frame, ...] = ()


@dataclasses.dataclass(frozen=True)
class Violation:
    """A cancel scope exited by the wrong task or out of nesting order."""

    kind: str
    cause: str
    backend: str
    opener: TaskInfo
    closer: TaskInfo
    #: anyio's (or trio's) own error message.
    message: str
    #: Wall-clock time the scope was entered, in ns since the epoch (None if unrecorded).
    entered_at_ns: int | None
    thread_id: int
    thread_name: str
    #: For task-group scopes: the host task and the child tasks alive at the time.
    task_group_host: str | None = None
    task_group_children: tuple[str, ...] = ()
    #: Filled by the advisor when a known upstream bug matches.
    advice: str | None = None
    #: The OTel context current when the scope was entered / exited.
    opener_context: Any = dataclasses.field(default=None, repr=False, compare=False)
    closer_context: Any = dataclasses.field(default=None, repr=False, compare=False)
    exception: BaseException | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def explanation(self) -> str:
        return CAUSE_EXPLANATIONS.get(self.cause, self.cause)

    def attributes(self) -> dict[str, Any]:
        """The span/event/log attributes, keyed by :mod:`scopetrace.semconv`."""
        attrs: dict[str, Any] = {
            semconv.VIOLATION_KIND: self.kind,
            semconv.VIOLATION_CAUSE: self.cause,
            **common_attributes(
                self.backend, self.opener, self.thread_id, self.thread_name,
                self.task_group_host, self.task_group_children,
            ),
            **side_attributes(self.closer, CLOSER_KEYS),
        }
        closer_site = _first_user_frame(self.closer.frames)
        if closer_site is not None:
            attrs[semconv.CODE_FILEPATH] = closer_site.filename
            attrs[semconv.CODE_LINENO] = closer_site.lineno
            attrs[semconv.CODE_FUNCTION] = closer_site.function
        if self.advice:
            attrs[semconv.ADVICE] = self.advice
        return attrs

    def metric_attributes(self) -> dict[str, str]:
        return {
            semconv.VIOLATION_KIND: self.kind,
            semconv.VIOLATION_CAUSE: self.cause,
            semconv.BACKEND: self.backend,
            semconv.OPENER_SITE: self.opener.site,
        }

    def summary(self) -> str:
        """One line: kind, cause and both tasks with their sites."""
        return (
            f"anyio cancel scope violation: {self.kind} ({self.cause}): entered in task "
            f"{self.opener.name!r} at {self.opener.site}, exited in task "
            f"{self.closer.name!r} at {self.closer.site}"
        )

    def note(self) -> str:
        """The note added to anyio's RuntimeError."""
        state = {True: "still running", False: "finished", None: "state unknown"}[
            self.opener.running
        ]
        return (
            f"scopetrace: {self.kind} ({self.cause}): scope entered in task "
            f"{self.opener.name!r} (id {self.opener.id}, {self.opener.coroutine}, {state}) "
            f"at {self.opener.site}; exited in task {self.closer.name!r} "
            f"(id {self.closer.id}, {self.closer.coroutine}) at {self.closer.site}"
        )

    def format(self) -> str:
        """The full human-readable report."""
        state = {True: "still running", False: "finished", None: "unknown"}[
            self.opener.running
        ]
        lines = [
            f"scopetrace: anyio cancel scope violation: {self.kind} ({self.cause})",
            f"  error:      RuntimeError: {self.message.splitlines()[0] if self.message else ''}",
            f"  backend:    {self.backend}, thread {self.thread_name!r}",
            f"  entered by: task {self.opener.name!r} (id {self.opener.id}) running "
            f"{self.opener.coroutine} [{state}]",
            f"              at {self.opener.site}",
            f"  exited by:  task {self.closer.name!r} (id {self.closer.id}) running "
            f"{self.closer.coroutine}",
            f"              at {self.closer.site}",
        ]
        if self.task_group_host is not None:
            lines.append(
                f"  task group: host {self.task_group_host}; children "
                f"{', '.join(self.task_group_children) or '(none alive)'}"
            )
        lines.append(f"  likely cause: {self.explanation}")
        if self.advice:
            lines.append(f"  advice: {self.advice}")
        lines.append("  entering stack (most recent call last):")
        lines.append(_indent(self.opener.stacktrace))
        lines.append("  exiting stack (most recent call last):")
        lines.append(_indent(self.closer.stacktrace))
        return "\n".join(lines)


OPENER_KEYS = (
    semconv.OPENER_TASK_NAME,
    semconv.OPENER_TASK_ID,
    semconv.OPENER_TASK_COROUTINE,
    semconv.OPENER_STACKTRACE,
    semconv.OPENER_SITE,
)
CLOSER_KEYS = (
    semconv.CLOSER_TASK_NAME,
    semconv.CLOSER_TASK_ID,
    semconv.CLOSER_TASK_COROUTINE,
    semconv.CLOSER_STACKTRACE,
    semconv.CLOSER_SITE,
)


def side_attributes(info: TaskInfo, keys: tuple[str, ...]) -> dict[str, Any]:
    """One task's five attributes, under the opener's or the closer's keys."""
    return dict(zip(keys, (info.name, info.id, info.coroutine, info.stacktrace, info.site)))


def common_attributes(
    backend: str,
    opener: TaskInfo,
    thread_id: int,
    thread_name: str,
    group_host: str | None,
    group_children: tuple[str, ...],
) -> dict[str, Any]:
    """What violation and orphan reports share: backend, opener, thread, task group."""
    attrs: dict[str, Any] = {
        semconv.BACKEND: backend,
        **side_attributes(opener, OPENER_KEYS),
        semconv.THREAD_ID: thread_id,
        semconv.THREAD_NAME: thread_name,
    }
    if opener.running is not None:
        attrs[semconv.OPENER_RUNNING] = opener.running
    if group_host is not None:
        attrs[semconv.TASK_GROUP_HOST] = group_host
        attrs[semconv.TASK_GROUP_CHILDREN] = list(group_children)
    return attrs


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines()) or "    <not recorded>"


def _first_user_frame(frames: tuple[Frame, ...]) -> Frame | None:
    for frame in frames:
        if not is_library(frame.filename):
            return frame
    return None


def coroutine_name(coro: object) -> str:
    """The coroutine's qualified name, never its repr (which may show arguments)."""
    if coro is None:
        return UNKNOWN_COROUTINE
    try:
        name = getattr(coro, "__qualname__", None)
    except Exception:  # a hostile awaitable must not break the report
        name = None
    return cap(name) if isinstance(name, str) else type(coro).__name__


UNKNOWN_COROUTINE = "<unknown>"
#: inspect.CO_COROUTINE, without importing inspect (~1 MiB) on every install.
CO_COROUTINE = 0x80

#: Longest task name or coroutine name put in a report.
MAX_NAME = 256
#: Longest stack text put in a report attribute.
MAX_STACKTRACE = 16_384


def cap(text: str, limit: int = MAX_NAME) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.lru_cache(maxsize=512)
def _resolve(
    raw: tuple[Any, ...], files: tuple[str, ...]
) -> tuple[tuple[Frame, ...], str, str]:
    # A storm repeats the same few stacks: resolve each once.  Bounded, and
    # holds only code objects and ints.  ``files`` is part of the key because
    # code objects compare equal across files (same bytecode, names, lines).
    frames = frames_of(raw)
    return tuple(frames), site_of(frames), format_stack(frames)


def side(
    name: str, task_id: int, coroutine: str, raw: tuple[Any, ...] | None, running: bool | None
) -> TaskInfo:
    """Build a :class:`TaskInfo` from a raw ``(code, lasti, ...)`` stack."""
    name = cap(name)
    if not raw:
        return TaskInfo(name, task_id, coroutine, "<not recorded>", "", running)
    frames, site, text = _resolve(raw, tuple(code.co_filename for code in raw[::2]))
    if coroutine == UNKNOWN_COROUTINE and raw[-2].co_flags & CO_COROUTINE:
        # The outermost frame of a task's stack is its coroutine (an eager
        # task's stack goes on into its parent's, so this is a best guess).
        coroutine = frames[-1].function
    return TaskInfo(name, task_id, coroutine, site, cap(text, MAX_STACKTRACE), running, frames)


def opener_stack(record: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if record is None else record[FRAMES_AT:]


#: (name, id, coroutine, running) of a task, as the backends describe it.
TaskDescription = tuple[str, int, str, "bool | None"]


def assemble(
    *,
    kind: str,
    backend: str,
    opener: TaskDescription,
    closer: TaskDescription,
    closer_is_finalizer: bool,
    siblings: bool,
    record: tuple[Any, ...] | None,
    closer_raw: tuple[Any, ...],
    exc: BaseException,
    group: tuple[str | None, tuple[str, ...]],
    closer_context: Any,
) -> Violation:
    """The Violation both backends build from what they found."""
    thread_id, thread_name = current_thread()
    return Violation(
        kind=kind,
        cause=classify(kind, closer_is_finalizer, opener[3], siblings),
        backend=backend,
        opener=side(*opener[:3], opener_stack(record), opener[3]),
        closer=side(*closer[:3], closer_raw, closer[3]),
        message=str(exc),
        entered_at_ns=record[0] if record else None,
        thread_id=thread_id,
        thread_name=thread_name,
        task_group_host=group[0],
        task_group_children=group[1],
        opener_context=record[1] if record else None,
        closer_context=closer_context,
        exception=exc,
    )


def current_thread() -> tuple[int, str]:
    t = threading.current_thread()
    return threading.get_ident(), t.name


def classify(
    kind: str, closer_is_finalizer: bool, opener_running: bool | None, siblings: bool
) -> str:
    """Map what is known about both tasks to a cause (see the README's table)."""
    if kind == semconv.KIND_NOT_INNERMOST:
        return semconv.CAUSE_MISNESTED
    if closer_is_finalizer:
        return semconv.CAUSE_ASYNCGEN_FINALIZER
    if siblings or opener_running:
        return semconv.CAUSE_SIBLING_TASK
    return semconv.CAUSE_OPENER_FINISHED

