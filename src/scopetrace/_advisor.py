"""Known-bug advisor: when the culprit is a known upstream bug, say which release fixes it.

The bugs live in ``known_bugs.json`` beside this module (docs/advisor.md has
the table and how each entry was verified).  An entry matches a report when

* one of its frames (file path suffix and function qualname) is among the
  culprit's frames: the frames from the scope out to one beyond the culprit,
  on the entering stack and on the exiting one (``stack`` says which; ``any``
  matches the whole of both stacks, for bugs of anyio itself that any
  violation can trigger);
* the installed version of its library is in the affected range, and every
  ``requires`` condition holds (another distribution's version range, or
  ``python_below``).

Versions are read from the installed metadata's directory names
(:mod:`scopetrace._packages`), off the event loop's thread.  A damaged data
file or an odd version string disables advice, never the report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from . import _packages
from ._report import Report
from ._stacks import Frame

DATA_FILE = "known_bugs.json"

_STACKS = ("opener", "closer", "either", "any")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """Another distribution that must be installed in a version range."""

    distributions: tuple[str, ...]
    affected_from: str | None
    fixed_in: str | None


@dataclasses.dataclass(frozen=True)
class KnownBug:
    name: str
    distributions: tuple[str, ...]
    affected_from: str | None
    fixed_in: str | None
    stack: str
    #: (path suffix with "/", function qualname) pairs.
    frames: tuple[tuple[str, str], ...]
    issue: str
    fix: str | None = None
    remedy: str | None = None
    requires: tuple[Requirement, ...] = ()
    python_below: str | None = None

    def matches_stack(self, report: Report) -> bool:
        opener = report.opener.frames
        closer = report.closer.frames if report.closer is not None else ()
        if report.blocker is not None:
            opener = report.blocker.frames
        if self.stack == "any":
            sides: list[Sequence[Frame]] = [opener, closer]
        else:
            culprit = report.culprit.frame if report.culprit is not None else None
            sides = []
            if self.stack in ("opener", "either"):
                sides.append(_window(opener, culprit))
            if self.stack in ("closer", "either"):
                sides.append(_window(closer, culprit))
        return any(_has_frame(frames, self.frames) for frames in sides)

    def affects(self, version: str) -> bool:
        return _in_range(version, self.affected_from, self.fixed_in)

    def conditions_hold(self) -> bool:
        if self.python_below is not None:
            below = tuple(int(p) for p in self.python_below.split("."))
            if sys.version_info[: len(below)] >= below:
                return False
        for requirement in self.requires:
            version = _packages.version_of(requirement.distributions)
            if version is None or not _in_range(
                version, requirement.affected_from, requirement.fixed_in
            ):
                return False
        return True

    def advice(self, version: str) -> str:
        issue = self.issue
        if self.fixed_in is None:
            return f"{self.name} {version} is affected by {issue}; no fixed release: {self.remedy}"
        fix = f" ({self.fix})" if self.fix else ""
        remedy = self.remedy or (
            f"upgrade to {self.name}>={self.fixed_in} (raise your pin or floor if you have one)"
        )
        return (
            f"{self.name} {version} is affected by {issue}, fixed in {self.fixed_in}{fix}: {remedy}"
        )


def _window(frames: Sequence[Frame], culprit: Frame | None) -> Sequence[Frame]:
    """The frames from the scope out to one beyond the culprit (or its
    counterpart: same file and owner, on the other stack)."""
    if culprit is None:
        return ()
    for i, frame in enumerate(frames):
        if frame.filename == culprit.filename and (
            frame == culprit or frame.owner == culprit.owner
        ):
            return frames[: i + 2]
    return ()


def _in_range(version: str, first: str | None, fixed: str | None) -> bool:
    key = version_key(version)
    if first is not None and key < version_key(first):
        return False
    return fixed is None or key < version_key(fixed)


def _has_frame(frames: Iterable[Frame], patterns: tuple[tuple[str, str], ...]) -> bool:
    for frame in frames:
        path = frame.filename.replace(os.sep, "/")
        for suffix, function in patterns:
            # Python 3.10 code objects have no qualname: only the last part.
            if frame.function in (function, function.rpartition(".")[2]) and path.endswith(suffix):
                return True
    return False


_RELEASE = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(.*)$")


def version_key(text: str) -> tuple[Any, ...]:
    """Order release strings: ``1.9 < 1.10 < 1.92.0rc1 < 1.92 == 1.92.0 < 1.92.0.post1``.

    Enough of PEP 440 for known-bug ranges, without depending on ``packaging``.
    Raises ValueError for a string that does not start with a release number.
    """
    m = _RELEASE.match(text)
    if m is None:
        raise ValueError(f"not a version: {text!r}")
    release = [int(part) for part in m.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    rest = m.group(2).lower().lstrip(".-_")
    # dev < pre-releases < the release < post-releases of one release number.
    phase = 2
    if rest.startswith("dev"):
        phase = 0
    elif rest.startswith(("a", "b", "c", "rc", "alpha", "beta", "pre", "preview")):
        phase = 1
    elif rest.startswith(("post", "rev", "r")) or (rest and rest[0].isdigit()):
        phase = 3
    return (tuple(release), phase, rest)


def _requirement(entry: Any) -> Requirement:
    return Requirement(
        tuple(str(d) for d in entry["distributions"]),
        entry.get("affected_from"),
        entry.get("fixed_in"),
    )


def parse(document: Any) -> tuple[KnownBug, ...]:
    """Validate the data file's content; raises ValueError naming the bad entry."""
    bugs = []
    for i, entry in enumerate(document["bugs"]):
        try:
            stack = entry.get("stack", "either")
            if stack not in _STACKS:
                raise ValueError(f"stack must be one of {', '.join(_STACKS)}")
            bug = KnownBug(
                name=str(entry["name"]),
                distributions=tuple(str(d) for d in entry["distributions"]),
                affected_from=entry.get("affected_from"),
                fixed_in=entry.get("fixed_in"),
                stack=stack,
                frames=tuple((str(f["file"]), str(f["function"])) for f in entry["frames"]),
                issue=str(entry["issue"]),
                fix=entry.get("fix"),
                remedy=entry.get("remedy"),
                requires=tuple(_requirement(r) for r in entry.get("requires", ())),
                python_below=entry.get("python_below"),
            )
            bounds = [bug.affected_from, bug.fixed_in]
            bounds += [b for r in bug.requires for b in (r.affected_from, r.fixed_in)]
            for bound in bounds:
                if bound is not None:
                    version_key(bound)
            if not bug.frames or not bug.distributions:
                raise ValueError("frames and distributions must not be empty")
            if bug.fixed_in is None and not bug.remedy:
                raise ValueError("an entry without a fixed release needs a remedy")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{DATA_FILE}: entry {i}: {exc!r}") from None
        bugs.append(bug)
    return tuple(bugs)


@functools.lru_cache(maxsize=1)
def known_bugs() -> tuple[KnownBug, ...]:
    """The shipped table, read once."""
    path = os.path.join(os.path.dirname(__file__), DATA_FILE)
    with open(path, encoding="utf-8") as f:
        return parse(json.load(f))


def match(report: Report, bugs: Iterable[KnownBug]) -> str | None:
    """Advice of the first library entry that matches, and of every matching
    ``any``-stack entry (bugs of anyio itself), joined."""
    library: str | None = None
    extra: list[str] = []
    for bug in bugs:
        if (library is not None and bug.stack != "any") or not bug.matches_stack(report):
            continue
        version = _packages.version_of(bug.distributions)
        if version is None:
            continue
        try:
            affected = bug.affects(version) and bug.conditions_hold()
        except ValueError:
            continue  # an installed version we cannot order: say nothing
        if not affected:
            continue
        if bug.stack == "any":
            extra.append(bug.advice(version))
        else:
            library = bug.advice(version)
    parts = ([library] if library else []) + extra
    return "; also: ".join(parts) if parts else None


def advise(report: Report) -> str | None:
    """Advice for a report that matches known upstream bugs, else None."""
    try:
        return match(report, known_bugs())
    except Exception:
        # Advice is a bonus: never let it cost the report itself.
        return None
