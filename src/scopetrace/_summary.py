"""``scopetrace report FILE``: summarise a jsonl file by kind, cause and site."""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from . import _jsonl, semconv


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
class Summary:
    groups: list[Group]
    total: int
    skipped: int
    first: str
    last: str

    def by(self, key: str) -> list[tuple[str, int]]:
        counts: collections.Counter[str] = collections.Counter()
        for group in self.groups:
            counts[getattr(group, key)] += group.count
        return counts.most_common()


def summarise(records: Iterable[dict[str, Any] | None]) -> Summary:
    groups: dict[tuple[str, str, str, str], Group] = {}
    total = skipped = 0
    first = last = ""
    for rec in records:
        if rec is None:
            skipped += 1
            continue
        attrs = rec[_jsonl.ATTRIBUTES]
        kind, cause, opener_site, closer_site = (
            str(attrs.get(name, "?"))
            for name in (
                semconv.VIOLATION_KIND,
                semconv.VIOLATION_CAUSE,
                semconv.OPENER_SITE,
                semconv.CLOSER_SITE,
            )
        )
        key = (kind, cause, opener_site, closer_site)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(kind, cause, opener_site, closer_site)
        when = str(rec.get(_jsonl.TIME, ""))
        # A record let through by the rate limit stands for those it held back.
        held_back = attrs.get(semconv.SUPPRESSED, 0)
        count = 1 + (held_back if isinstance(held_back, int) else 0)
        group.count += count
        group.first = min(group.first or when, when)
        group.last = max(group.last, when)
        group.explanation = group.explanation or str(rec.get(_jsonl.EXPLANATION, ""))
        if isinstance(rec.get(_jsonl.PID), int):
            group.pids.add(rec[_jsonl.PID])
        total += count
        first = min(first or when, when)
        last = max(last, when)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.kind, g.cause, g.opener_site))
    return Summary(ordered, total, skipped, first, last)


def render(summary: Summary, source: str, out: TextIO) -> None:
    w = out.write
    if not summary.total:
        w(f"scopetrace report: no violations in {source}\n")
    else:
        w(
            f"scopetrace report: {summary.total} violation(s) in {source}, "
            f"{summary.first} .. {summary.last}, {len(summary.groups)} distinct\n\n"
        )
        w("by kind:  " + ", ".join(f"{k} {n}" for k, n in summary.by("kind")) + "\n")
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
        w(f"\n{summary.skipped} line(s) skipped: not scopetrace violation records\n")


def _records(paths: list[str]) -> Iterator[dict[str, Any] | None]:
    for path in paths:
        if path == "-":
            yield from _jsonl.read(iter(sys.stdin))
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from _jsonl.read(iter(f))


def report(paths: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Summarise the files (``-`` is standard input); 2 when one cannot be read."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        summary = summarise(_records(paths))
    except OSError as exc:
        err.write(f"scopetrace report: cannot read {exc.filename}: {exc.strerror or exc}\n")
        return 2
    render(summary, ", ".join(paths), out)
    return 0
