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
    reports: list[Report], level: int, exc: BaseException | None = None,
    suppressed: int = 0, held_back: int = 0,
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
    if held_back:
        message = (
            f"{held_back} more report(s) like this were held back by the rate limit: "
            f"{primary.summary()}"
        )
        attrs[semconv.SUPPRESSED] = held_back
        text = message
    else:
        message = primary.summary()
        if len(reports) > 1:
            message += f" (and {len(reports) - 1} more report(s) of this incident)"
        text = format_incident(reports)
    frame = primary.culprit.frame if primary.culprit is not None else None
    extra: dict[str, Any] = {
        "scopetrace": attrs,
        "scopetrace_report": text,
        "scopetrace_reports": [r.attributes() for r in reports],
    }
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = _log.makeRecord(
        _log.name, level,
        frame.filename if frame is not None else "<scopetrace>",
        frame.lineno if frame is not None else 0,
        "%s", (message,), exc_info,
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
