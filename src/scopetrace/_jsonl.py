"""The ``jsonl`` file: one JSON object per violation, one per line.

Written by the embedded ``jsonl`` exporter and read by ``scopetrace report``.
The field names below are the file's contract; ``attributes`` holds the span's
attributes, keyed exactly as in :mod:`scopetrace.semconv`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from ._violation import Violation

#: When the violation was reported, ISO 8601 in UTC.
TIME = "time"
#: Process that reported it.
PID = "pid"
#: One-line summary (kind, cause, both tasks and sites).
SUMMARY = "summary"
#: anyio's (or trio's) own error message.
MESSAGE = "message"
#: The likely cause, in words, with the fix.
EXPLANATION = "explanation"
#: The span's attributes, keyed by :mod:`scopetrace.semconv`.
ATTRIBUTES = "attributes"


def record(
    violation: Violation, attributes: dict[str, Any] | None = None, now: float | None = None
) -> dict[str, Any]:
    """The JSON object for one violation; ``attributes`` are the span's if given
    (they may add to ``violation.attributes()``, e.g. the suppressed count)."""
    when = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(now, timezone.utc)
    return {
        TIME: when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        PID: os.getpid(),
        SUMMARY: violation.summary(),
        MESSAGE: violation.message,
        EXPLANATION: violation.explanation,
        ATTRIBUTES: violation.attributes() if attributes is None else attributes,
    }


def append(path: str, violation: Violation, attributes: dict[str, Any] | None = None) -> None:
    """Append one line to ``path``, creating it if needed.

    One ``write`` on an ``O_APPEND`` descriptor, so lines written by several
    processes (server workers sharing the file) never interleave.
    """
    line = json.dumps(record(violation, attributes), default=str, ensure_ascii=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read(lines: Iterator[str]) -> Iterator[dict[str, Any] | None]:
    """Parse lines of a jsonl file: a record each, or None for a line that is not one."""
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            yield None
            continue
        ok = isinstance(obj, dict) and isinstance(obj.get(ATTRIBUTES), dict)
        yield obj if ok else None
