"""Sentry: one readable event per failure, with the diagnosis in tags and a context.

Only when the application has initialised ``sentry_sdk`` itself: scopetrace
never imports it otherwise (the check reads ``sys.modules``), and costs
nothing on the hot path either way.

A failure can reach Sentry up to three times: the ``RuntimeError`` captured
by a framework integration (Starlette, FastAPI) when it ends a request, the
``scopetrace`` ERROR log record (Sentry's logging integration), and asyncio's
"Task exception was never retrieved" record.  Each carries the same
exception object, which carries its report (:func:`attach`).  One global
event processor, added at the first report while Sentry is active, adds the
tags and the context to the first event of that exception and drops the
later ones.  A violation the application swallowed is then still told once,
by the log record, which holds the exception for this purpose
(:func:`wants_exc_info`).

Sentry limits tag keys to 32 characters and values to 200 characters on one
line, so the tags are short aliases (``semconv.SENTRY_TAGS``); the context
holds every attribute under its full name.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import semconv
from .._report import Report

#: The exception attribute that carries the report.
ATTRIBUTE = "_scopetrace_report"
#: Sentry's limits on tag values.
_MAX_TAG_VALUE = 200


class Told:
    """What travels on the exception: its report (replaced by the enriched one
    once the delivery thread has it), and whether Sentry has an event for it."""

    __slots__ = ("report", "captured")

    def __init__(self, report: Report) -> None:
        self.report = report
        self.captured = False


def attach(exc: BaseException, report: Report) -> Told | None:
    """Put the report on anyio's exception (never raises)."""
    try:
        told = Told(report)
        setattr(exc, ATTRIBUTE, told)
        return told
    except Exception:
        return None


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
    """Add the event processor once, if Sentry is active (never raises)."""
    global _installed
    if _installed or not active():
        return
    try:
        from sentry_sdk.scope import add_global_event_processor  # type: ignore[import-not-found]
    except Exception:
        try:
            from sentry_sdk import add_global_event_processor  # type: ignore[import-not-found,no-redef]
        except Exception:
            return
    add_global_event_processor(_process)
    _installed = True


def _told_of(exc: Any, depth: int = 0) -> Told | None:
    """The report carried by ``exc``, its cause or context, or a member of an
    exception group (the request's task group wraps anyio's error)."""
    if exc is None or depth > 8:
        return None
    told = getattr(exc, ATTRIBUTE, None)
    if isinstance(told, Told):
        return told
    for inner in (*getattr(exc, "exceptions", ()), exc.__cause__, exc.__context__):
        found = _told_of(inner, depth + 1)
        if found is not None:
            return found
    return None


def _process(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    try:
        exc_info = hint.get("exc_info") if hint else None
        told = _told_of(exc_info[1] if exc_info else None)
        if told is None:
            return event
        if told.captured:
            return None  # this failure has its event already
        told.captured = True
        report = told.report
        tags = event.setdefault("tags", {})
        for key, value in tags_of(report).items():
            tags[key] = value
        event.setdefault("contexts", {})[semconv.SENTRY_CONTEXT] = report.attributes()
        _ensure_note(event, report)
    except Exception:
        pass  # an event without our tags beats no event
    return event


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
    text = text.replace("\n", " ")
    if len(text) <= _MAX_TAG_VALUE:
        return text
    # Keep the end of a site: the file name, line and function.
    return "…" + text[-(_MAX_TAG_VALUE - 1):]


def _ensure_note(event: dict[str, Any], report: Report) -> None:
    """sentry-sdk < 2.16 leaves exception notes out of the value: add ours."""
    if not report.is_violation:
        return
    note = report.note()
    for value in (event.get("exception") or {}).get("values") or ():
        if value.get("type") == "RuntimeError" and note not in (value.get("value") or ""):
            value["value"] = f"{value.get('value') or ''}\n{note}"
            return
