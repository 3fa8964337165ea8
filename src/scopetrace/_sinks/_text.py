"""Text: the log record and the console report, one per incident.

The log record goes to logger ``scopetrace`` (the application's logging
configuration decides where it goes: a library adds no handler but a
``NullHandler``).  It is made to read as if it was logged where and when the
report happened: its ``created`` time, thread and process are the report's,
and its ``pathname``/``lineno``/``funcName`` are the culprit's, so a log line
formatted with ``%(pathname)s:%(lineno)d`` points at the code to fix.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .. import semconv
from .._report import Report, format_incident, primary_of

_log = logging.getLogger(semconv.LOGGER_NAME)
# A library must not print through logging's last-resort handler: the
# application's logging configuration decides where records go.
_log.addHandler(logging.NullHandler())


def log_incident(
    reports: list[Report],
    level: int,
    exc: BaseException | None = None,
    suppressed: int = 0,
    held_back: int = 0,
) -> None:
    """One record for the reports of one incident (or for a held-back count)."""
    primary = primary_of(reports)
    if not primary.is_violation:
        level = min(level, logging.WARNING)
    if not _log.isEnabledFor(level):
        return
    attrs = primary.attributes()
    if suppressed:
        attrs[semconv.SUPPRESSED] = suppressed
    # Templates that say what the record is: tools that group records by
    # their template (Sentry) keep held-back notices apart from reports.
    if held_back:
        template: str = "%d more report(s) like this were held back by the rate limit: %s"
        args: tuple[Any, ...] = (held_back, primary.summary())
        attrs[semconv.SUPPRESSED] = held_back
        text = template % args
    else:
        template, args = "%s", (primary.summary(),)
        if len(reports) > 1:
            template, args = (
                "%s (and %d more report(s) of this incident)",
                (primary.summary(), len(reports) - 1),
            )
        text = format_incident(reports)
    frame = primary.culprit.frame if primary.culprit is not None else None
    extra: dict[str, Any] = {
        "scopetrace": attrs,
        "scopetrace_report": text,
        "scopetrace_reports": [r.attributes() for r in reports],
    }
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = _log.makeRecord(
        _log.name,
        level,
        frame.filename if frame is not None else "<scopetrace>",
        frame.lineno if frame is not None else 0,
        template,
        args,
        exc_info,
        func=frame.function if frame is not None else None,
        extra=extra,
    )
    record.created = primary.reported_at_ns / 1e9
    record.msecs = (primary.reported_at_ns // 1_000_000) % 1000
    record.relativeCreated = (record.created - logging._startTime) * 1000  # type: ignore[attr-defined]
    record.thread = primary.thread_id
    record.threadName = primary.thread_name
    _log.handle(record)


def print_incident(reports: list[Report]) -> None:
    """The human-readable report on stderr (the ``console`` exporter)."""
    _print(format_incident(reports))


def print_held_back(report: Report, count: int) -> None:
    _print(
        f"scopetrace: {count} more report(s) like this were held back by the rate limit "
        f"[incident {report.incident_id}]: {report.summary()}"
    )


def _print(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except Exception:
        pass  # a closed or broken stderr: nothing else to tell
