"""Sentry: one readable event per failure, with the diagnosis in tags and a context.

Only when the application has initialised ``sentry_sdk`` itself: scopetrace
never imports it otherwise (the check reads ``sys.modules``), and costs
nothing on the hot path either way -- everything here runs at a violation.

A failure can reach Sentry several times: the ``RuntimeError`` captured by a
framework integration (Starlette, FastAPI) when it ends a request, uvicorn's
"Exception in ASGI application" record, the ``scopetrace`` ERROR log record
(Sentry's logging integration), and asyncio's "Task exception was never
retrieved" record.  Each carries the same exception object, which carries its
report (:func:`attach`).  One global event processor, added at the first
violation while Sentry is active (on the thread that saw it, so it is there
before any framework captures the exception), decides:

* the first event of that exception gets the tags, the context and a
  fingerprint (one Sentry issue per culprit), and every later one is dropped;
* except asyncio's record of a task's unretrieved exception (or of an async
  generator's finalizer): the application swallowed that violation, and the
  ``scopetrace`` record tells it better -- its message is the diagnosis --
  so asyncio's is dropped whenever scopetrace's own record will reach
  Sentry (:func:`_own_record_reaches_sentry`).  A violation held back by the
  rate limit then has no event of its own: the record that counts what was
  held back stands for it.

The ``scopetrace`` log record holds the exception only while Sentry is active
(:func:`wants_exc_info`), so that it becomes a full exception event.

Sentry limits tag keys to 32 characters and values to 200 characters on one
line, so the tags are short aliases (``semconv.SENTRY_TAGS``); the context
holds every attribute under its full name (contexts are not trimmed to ten
keys, as ``extra`` is).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from typing import Any

from .. import semconv
from .._report import Report

#: The exception attribute that carries the report.
ATTRIBUTE = "_scopetrace_report"
#: Sentry's limit on tag values.
_MAX_TAG_VALUE = 200
#: Where the whole report, as text, goes in an event's ``extra``.
EXTRA_REPORT = "scopetrace_report"
#: First element of the fingerprint of every event scopetrace enriched.
FINGERPRINT = "anyio-cancel-scope-violation"

#: Serialises the "first event of this exception?" decision across threads
#: (a framework's capture on the event loop's thread, the log record on the
#: delivery thread).
_lock = threading.Lock()


class Told:
    """What travels on the exception: its report, and whether Sentry has an
    event for it."""

    __slots__ = ("_report", "captured", "enriched", "level")

    def __init__(self, report: Report, level: int) -> None:
        self._report = report
        #: The level of the report's own ``scopetrace`` log record.
        self.level = level
        #: Whether the report has its culprit's package and the advice.
        self.enriched = False
        self.captured = False

    @property
    def report(self) -> Report:
        return self._report

    @report.setter
    def report(self, report: Report) -> None:
        """The delivery thread hands over the enriched report."""
        self._report = report
        self.enriched = True

    def ready(self) -> Report:
        """The enriched report.  A framework usually captures the exception
        before the delivery thread got to it: then it is enriched here, inside
        Sentry's capture (reading a few cached metadata files, once per
        failure, next to Sentry's own serialisation of the event)."""
        if not self.enriched:
            from .._diagnosis import enrich

            self._report = enrich(self._report)
            self.enriched = True
        return self._report


def attach(exc: BaseException, report: Report, level: int) -> Told | None:
    """Put the report (logged at ``level``) on anyio's exception, and the
    event processor in place if Sentry is active (never raises)."""
    try:
        told = Told(report, level)
        setattr(exc, ATTRIBUTE, told)
    except Exception:
        return None
    try:
        install_processor()
    except Exception:
        pass
    return told


def active() -> bool:
    """Whether the application has initialised Sentry (never imports it)."""
    sdk = sys.modules.get("sentry_sdk")
    if sdk is None:
        return False
    try:
        get_client = getattr(sdk, "get_client", None)
        if get_client is not None:  # 2.x
            return bool(get_client().is_active())
        return getattr(sdk.Hub.current, "client", None) is not None  # 1.x
    except Exception:
        return False


def wants_exc_info() -> bool:
    """The log record carries the exception only for Sentry's sake: its
    traceback would otherwise just lengthen ordinary log output."""
    return active()


_installed = False


def install_processor() -> None:
    """Add the event processor once, if Sentry is active (never raises, never
    imports: ``sentry_sdk`` imports its ``scope`` module itself)."""
    global _installed
    if _installed or not active():
        return
    scope: Any = sys.modules.get("sentry_sdk.scope")
    add = getattr(scope, "add_global_event_processor", None)
    if add is None:
        return
    with _lock:
        if not _installed:  # another thread may have been first
            add(_process)
            _installed = True


def _told_of(exc: Any) -> Told | None:
    """The report carried by ``exc``, its cause or context, or a member of an
    exception group (the request's task group wraps anyio's error)."""
    for _, told in _carriers(exc):
        return told
    return None


def _carriers(
    exc: Any, depth: int = 0, seen: set[int] | None = None
) -> Iterator[tuple[BaseException, Told]]:
    """Every exception in ``exc``'s tree that carries a report, ``exc`` first."""
    if not isinstance(exc, BaseException) or depth > 8:
        return
    seen = set() if seen is None else seen
    if id(exc) in seen or len(seen) > 256:
        return
    seen.add(id(exc))
    told = getattr(exc, ATTRIBUTE, None)
    if isinstance(told, Told):
        yield exc, told
    members = getattr(exc, "exceptions", None)
    inner: list[Any] = list(members) if isinstance(members, (tuple, list)) else []
    for other in (*inner, exc.__cause__, exc.__context__):
        yield from _carriers(other, depth + 1, seen)


def _process(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    try:
        exc_info = hint.get("exc_info") if hint else None
        exc = exc_info[1] if exc_info else None
        told = _told_of(exc)
        if told is None:
            return event
        record = hint.get("log_record")
        with _lock:
            if told.captured:
                return None  # this failure has its event already
            if _is_asyncio_record(record) and _own_record_reaches_sentry(told.level):
                return None  # the scopetrace record will tell it
            told.captured = True
        _enrich(event, told.ready())
        _ensure_notes(event, exc)
    except Exception:
        pass  # an event without our tags beats no event
    return event


def _is_asyncio_record(record: Any) -> bool:
    name = getattr(record, "name", None)
    return isinstance(name, str) and (name == "asyncio" or name.startswith("asyncio."))


def _own_record_reaches_sentry(level: int) -> bool:
    """Whether the ``scopetrace`` record of a violation, logged at ``level``,
    will become a Sentry event: its level is enabled, and Sentry's logging
    integration makes events at that level from that logger.  Any doubt
    answers no (then asyncio's record is kept: two events beat none)."""
    try:
        logger = logging.getLogger(semconv.LOGGER_NAME)
        if logger.disabled or not logger.isEnabledFor(level):
            return False
        integrations = sys.modules.get("sentry_sdk.integrations.logging")
        if integrations is None:
            return False
        sdk: Any = sys.modules["sentry_sdk"]
        integration = sdk.get_client().get_integration(integrations.LoggingIntegration)
        handler = getattr(integration, "_handler", None)
        if handler is None or level < handler.level:
            return False
        ignored = getattr(integrations, "_IGNORED_LOGGERS", ())
        return not any(fnmatch(semconv.LOGGER_NAME, pattern) for pattern in ignored)
    except Exception:
        return False


def _enrich(event: dict[str, Any], report: Report) -> None:
    tags = event.get("tags")
    if not isinstance(tags, dict):
        tags = event["tags"] = {}
    tags.update(tags_of(report))
    contexts = event.get("contexts")
    if not isinstance(contexts, dict):
        contexts = event["contexts"] = {}
    contexts[semconv.SENTRY_CONTEXT] = report.attributes()
    extra = event.get("extra")
    if not isinstance(extra, dict):
        extra = event["extra"] = {}
    # The log record's copies of the attributes: Sentry trims extra values to
    # ten keys, and the context holds them all.
    extra.pop("scopetrace", None)
    extra.pop("scopetrace_reports", None)
    extra.setdefault(EXTRA_REPORT, report.format())
    if not event.get("fingerprint"):
        # One issue per bug to fix: a request's 500 and a swallowed violation
        # of the same culprit have different stack traces.
        culprit = report.culprit.site if report.culprit is not None else report.opener.site
        event["fingerprint"] = [FINGERPRINT, report.kind or "", report.cause or "", culprit]


def tags_of(report: Report) -> dict[str, str]:
    culprit = report.culprit
    values = {
        semconv.SENTRY_TAG_KIND: report.kind or "orphaned",
        semconv.SENTRY_TAG_CAUSE: report.cause or "",
        semconv.SENTRY_TAG_BACKEND: report.backend,
        semconv.SENTRY_TAG_CULPRIT_SITE: culprit.site if culprit else "",
        semconv.SENTRY_TAG_CULPRIT_PACKAGE: (culprit.package or "") if culprit else "",
        semconv.SENTRY_TAG_CULPRIT_VERSION: (culprit.version or "") if culprit else "",
        semconv.SENTRY_TAG_OPENER_TASK: report.opener.name,
        semconv.SENTRY_TAG_CLOSER_TASK: report.closer.name if report.closer else "",
        semconv.SENTRY_TAG_INCIDENT: report.incident_id,
    }
    return {k: _tag_value(v) for k, v in values.items() if v}


def _tag_value(text: str) -> str:
    text = " ".join(text.split())  # one line
    if len(text) <= _MAX_TAG_VALUE:
        return text
    # Keep the end of a site: the file name, line and function.
    return "…" + text[-(_MAX_TAG_VALUE - 1) :]


def _ensure_notes(event: dict[str, Any], exc: Any) -> None:
    """Python 3.10 has no exception notes, and sentry-sdk < 2.16 leaves them
    out of the value: add scopetrace's to each of anyio's errors that lacks it
    (a task group's ExceptionGroup holds one per scope exited wrongly)."""
    values = [
        v
        for v in (event.get("exception") or {}).get("values") or ()
        if isinstance(v, dict) and isinstance(v.get("value", ""), str)
    ]
    done: set[int] = set()
    for carrier, told in _carriers(exc):
        report = told.report
        if not report.is_violation or report.closer is None:
            continue
        note, message = report.note(), str(carrier)
        for i, value in enumerate(values):
            text = value.get("value") or ""
            if (
                i not in done
                and value.get("type") == type(carrier).__name__
                and (text == message or text.startswith(message + "\n"))
            ):
                done.add(i)
                if note not in text:
                    value["value"] = f"{text}\n{note}"
                break
