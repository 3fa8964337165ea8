"""The ``jsonl`` file: one JSON object per incident (or held-back count), one per line.

Written by the embedded ``jsonl`` exporter and read by ``scopetrace report``.
The field names below are the file's contract; ``attributes`` holds the span's
attributes, keyed exactly as in :mod:`scopetrace.semconv`.

Whole lines or nothing.  Several processes (server workers) append to one
file, disks fill up, and processes are killed mid-write:

* every append holds an exclusive ``flock`` on the file, so lines of
  different processes never interleave;
* a write the disk cut short is completed, or -- if the rest cannot be
  written -- cut back off the file (``ftruncate``), and the line is reported
  as not written (the caller prints it on stderr);
* a process killed in the middle of a write leaves a partial last line: the
  next writer finds it (the file does not end with a newline) and cuts it
  off first, saying so on stderr, so every line of the file parses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .._report import Report, primary_of

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone
    fcntl = None  # type: ignore[assignment]

#: What the line is: ``violation`` or ``orphaned`` (an incident, told by its
#: first violation if it has one), or ``held_back`` (a count the rate limit
#: held back for a key that then went quiet).
EVENT = "event"
#: When it was written, ISO 8601 in UTC.
TIME = "time"
#: Process that wrote it.
PID = "pid"
#: The incident id (``anyio.cancel_scope.incident.id``).
INCIDENT = "incident"
#: One-line summary, leading with the code to fix.
SUMMARY = "summary"
#: anyio's (or trio's) own error message ("" for an orphan warning).
MESSAGE = "message"
#: The likely cause, in words, with the fix.
EXPLANATION = "explanation"
#: The attributes of the incident's first report, keyed by :mod:`scopetrace.semconv`.
ATTRIBUTES = "attributes"
#: The incident's other reports: objects with EVENT, SUMMARY and ATTRIBUTES.
RELATED = "related"
#: For ``held_back``: how many reports were held back.
COUNT = "count"

HELD_BACK = "held_back"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _event(report: Report) -> str:
    return "violation" if report.is_violation else "orphaned"


def incident_record(
    reports: list[Report], suppressed: dict[int, int] | None = None
) -> dict[str, Any]:
    """The JSON object for one incident (``suppressed``: index -> held-back count
    to put on that report's attributes)."""
    suppressed = suppressed or {}

    def attributes(i: int, report: Report) -> dict[str, Any]:
        attrs = report.attributes()
        if suppressed.get(i):
            from .. import semconv

            attrs[semconv.SUPPRESSED] = suppressed[i]
        return attrs

    primary = primary_of(reports)
    index = reports.index(primary)
    return {
        EVENT: _event(primary),
        TIME: _now(),
        PID: os.getpid(),
        INCIDENT: primary.incident_id,
        SUMMARY: primary.summary(),
        MESSAGE: primary.message,
        EXPLANATION: primary.explanation,
        ATTRIBUTES: attributes(index, primary),
        RELATED: [
            {EVENT: _event(r), SUMMARY: r.summary(), ATTRIBUTES: attributes(i, r)}
            for i, r in enumerate(reports)
            if r is not primary
        ],
    }


def held_back_record(report: Report, count: int) -> dict[str, Any]:
    return {
        EVENT: HELD_BACK,
        TIME: _now(),
        PID: os.getpid(),
        INCIDENT: report.incident_id,
        COUNT: count,
        SUMMARY: report.summary(),
        MESSAGE: report.message,
        EXPLANATION: report.explanation,
        ATTRIBUTES: report.attributes(),
        RELATED: [],
    }


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode("utf-8")


def append(path: str, line: bytes) -> str | None:
    """Append one whole line to ``path`` (created if need be).

    Returns None, or a sentence about a partial line of another writer that
    was repaired first.  Raises OSError when the line could not be written
    whole; the file is then as it was before.
    """
    # Read and write: the tail is read to find a partial line.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            repaired = _repair_tail(fd)
            start = os.lseek(fd, 0, os.SEEK_END)
            written = 0
            try:
                while written < len(line):
                    n = os.write(fd, line[written:])
                    if n <= 0:
                        raise OSError("write made no progress")
                    written += n
            except OSError:
                if written:
                    os.ftruncate(fd, start)  # never leave half a line behind
                raise
            return repaired
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _repair_tail(fd: int) -> str | None:
    """With the lock held: cut off a last line without its newline (its writer
    was killed in the middle of writing it)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    end = size
    while end > 0:
        begin = max(0, end - 65536)
        chunk = os.pread(fd, end - begin, begin)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = begin + newline + 1
            break
        end = begin
    else:
        keep = 0
    os.ftruncate(fd, keep)
    return f"cut off a partial last line ({size - keep} bytes) left by a writer that died"


def read(lines: Iterator[str]) -> Iterator[dict[str, Any] | None]:
    """Parse lines of a jsonl file: a record each, or None for a line that is not one."""
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            yield None
            continue
        ok = isinstance(obj, dict) and isinstance(obj.get(ATTRIBUTES), dict)
        yield obj if ok else None
