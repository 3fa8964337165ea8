"""``scopetrace report FILE``: summarise a jsonl file by culprit, kind, cause and site.

The file is read as untrusted input (it may be shared by many processes,
truncated, or written by anyone): a line that is not a scopetrace record is
counted and skipped, whatever it holds (deep nesting, huge or negative
numbers, wrong types), every string printed has its control characters
escaped, and a closed output pipe (``| head``) ends the command quietly.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from . import semconv
from ._sinks import _jsonl
from ._text import cap, clean

#: Largest count one line may stand for (a held-back count); more is damage.
_MAX_COUNT = 10**9


@dataclasses.dataclass
class Group:
    """Violations with the same kind, cause, opener site and closer site."""

    kind: str
    cause: str
    opener_site: str
    closer_site: str
    count: int = 0
    first: str = ""
    last: str = ""
    explanation: str = ""
    pids: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class Culprit:
    """Violations and orphan warnings with the same code to fix."""

    site: str
    package: str
    version: str
    violations: int = 0
    orphans: int = 0
    advice: str = ""
    kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class Summary:
    groups: list[Group]
    culprits: list[Culprit]
    total: int
    orphans: int
    incidents: int
    skipped: int
    first: str
    last: str

    def by(self, key: str) -> list[tuple[str, int]]:
        counts: collections.Counter[str] = collections.Counter()
        for group in self.groups:
            counts[getattr(group, key)] += group.count
        return counts.most_common()


def _text(value: Any, limit: int = 1024) -> str:
    return cap(clean(value if isinstance(value, str) else str(value)), limit)


def _count(value: Any) -> int:
    """A count from the file: a non-negative int within reason, else 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value if 0 <= value <= _MAX_COUNT else 0


def _reports(rec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(event, attributes, how many it stands for) of each report of a line."""
    event = rec.get(_jsonl.EVENT, "violation")  # 0.1 files have no event field
    attrs = rec[_jsonl.ATTRIBUTES]
    if event == _jsonl.HELD_BACK:
        yield (
            "violation" if semconv.VIOLATION_KIND in attrs else "orphaned",
            attrs,
            _count(rec.get(_jsonl.COUNT)),
        )
        return
    # A report let through by the rate limit stands for those it held back.
    yield str(event), attrs, 1 + _count(attrs.get(semconv.SUPPRESSED, 0))
    related = rec.get(_jsonl.RELATED)
    for other in related if isinstance(related, list) else ():
        if isinstance(other, dict) and isinstance(other.get(_jsonl.ATTRIBUTES), dict):
            inner = other[_jsonl.ATTRIBUTES]
            yield (
                str(other.get(_jsonl.EVENT, "violation")),
                inner,
                1 + _count(inner.get(semconv.SUPPRESSED, 0)),
            )


def summarise(records: Iterable[dict[str, Any] | None]) -> Summary:
    groups: dict[tuple[str, str, str, str], Group] = {}
    culprits: dict[tuple[str, str, str], Culprit] = {}
    incidents: set[str] = set()
    total = orphans = skipped = 0
    first = last = ""
    for rec in records:
        if rec is None:
            skipped += 1
            continue
        when = _text(rec.get(_jsonl.TIME, ""), 64)
        pid = rec.get(_jsonl.PID)
        explanation = _text(rec.get(_jsonl.EXPLANATION, ""))
        if isinstance(rec.get(_jsonl.INCIDENT), str):
            incidents.add(rec[_jsonl.INCIDENT])
        for event, attrs, count in _reports(rec):
            if not count:
                continue
            key3 = (
                _text(attrs.get(semconv.CULPRIT_SITE, "")),
                _text(attrs.get(semconv.CULPRIT_PACKAGE, "")),
                _text(attrs.get(semconv.CULPRIT_PACKAGE_VERSION, "")),
            )
            culprit = culprits.get(key3)
            if culprit is None:
                culprit = culprits[key3] = Culprit(*key3)
            culprit.advice = culprit.advice or _text(attrs.get(semconv.ADVICE, ""), 4096)
            if event != "violation":
                culprit.orphans += count
                orphans += count
                continue
            kind, cause, opener_site, closer_site = (
                _text(attrs.get(name, "?"))
                for name in (
                    semconv.VIOLATION_KIND,
                    semconv.VIOLATION_CAUSE,
                    semconv.OPENER_SITE,
                    semconv.CLOSER_SITE,
                )
            )
            culprit.violations += count
            culprit.kinds[f"{kind} ({cause})"] += count
            key = (kind, cause, opener_site, closer_site)
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(kind, cause, opener_site, closer_site)
            group.count += count
            group.first = min(group.first or when, when)
            group.last = max(group.last, when)
            group.explanation = group.explanation or explanation
            if isinstance(pid, int) and not isinstance(pid, bool):
                group.pids.add(pid)
            total += count
            first = min(first or when, when)
            last = max(last, when)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.kind, g.cause, g.opener_site))
    by_culprit = sorted(
        culprits.values(), key=lambda c: (-c.violations, -c.orphans, c.package, c.site)
    )
    return Summary(ordered, by_culprit, total, orphans, len(incidents), skipped, first, last)


def render(summary: Summary, source: str, out: TextIO) -> None:
    w = out.write
    source = _text(source)
    if not summary.total and not summary.orphans:
        w(f"scopetrace report: no violations in {source}\n")
    else:
        w(
            f"scopetrace report: {summary.total} violation(s) and {summary.orphans} orphan "
            f"warning(s) in {source}, {summary.first or '?'} .. {summary.last or '?'}, "
            f"{len(summary.groups)} distinct, {summary.incidents} incident(s)\n\n"
        )
        w("by culprit (the code to fix, most frequent first):\n")
        for c in summary.culprits:
            package = f"{c.package} {c.version}  " if c.package else "(application)  "
            w(f"  {c.violations:>5}  {package}{c.site or '<unknown>'}\n")
            details = ", ".join(f"{k} {n}" for k, n in c.kinds.most_common())
            if c.orphans:
                details = (details + ", " if details else "") + f"orphan warnings {c.orphans}"
            w(f"         {details}\n")
            if c.advice:
                w(f"         advice: {c.advice}\n")
        if summary.total:
            w("\nby kind:  " + ", ".join(f"{k} {n}" for k, n in summary.by("kind")) + "\n")
            w("by cause: " + ", ".join(f"{k} {n}" for k, n in summary.by("cause")) + "\n\n")
            w("by site (most frequent first):\n")
            for g in summary.groups:
                processes = f", {len(g.pids)} process(es)" if len(g.pids) > 1 else ""
                w(f"  {g.count:>5}  {g.kind} ({g.cause}){processes}, {g.first} .. {g.last}\n")
                w(f"         entered at {g.opener_site}\n")
                w(f"         exited at  {g.closer_site}\n")
            w("\nlikely causes:\n")
            seen: set[str] = set()
            for g in summary.groups:
                if g.cause not in seen and g.explanation:
                    seen.add(g.cause)
                    w(f"  {g.cause}: {g.explanation}\n")
    if summary.skipped:
        w(f"\n{summary.skipped} line(s) skipped: not scopetrace records\n")


def _records(paths: list[str]) -> Iterator[dict[str, Any] | None]:
    for path in paths:
        if path == "-":
            yield from _jsonl.read(iter(sys.stdin))
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from _jsonl.read(iter(f))


def report(paths: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Summarise the files (``-`` is standard input); 2 when one cannot be read."""
    output: TextIO = out or sys.stdout
    errors: TextIO = err or sys.stderr
    try:
        summary = summarise(_records(paths))
    except OSError as exc:
        errors.write(
            f"scopetrace report: cannot read {_text(exc.filename)}: {exc.strerror or exc}\n"
        )
        return 2
    try:
        render(summary, ", ".join(paths), output)
        output.flush()
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours.  Point stdout
        # at /dev/null so that the interpreter's final flush stays quiet too.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, output.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    return 0
