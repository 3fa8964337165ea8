"""Known-bug advisor: match a violation against known upstream culprits.

The culprits live in ``known_bugs.json`` beside this module.  An entry matches
when one of its frames (file path suffix and function) is in the opener's or
closer's recorded stack *and* the installed version of its library is in the
affected range.  Runs only on the violation path; a damaged data file or an
odd version string disables advice, never the report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ._capture import Frame
from ._violation import Violation

DATA_FILE = "known_bugs.json"

_STACKS = ("opener", "closer", "either")


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

    def matches_stack(self, violation: Violation) -> bool:
        sides: list[Sequence[Frame]] = []
        if self.stack in ("opener", "either"):
            sides.append(violation.opener.frames)
        if self.stack in ("closer", "either"):
            sides.append(violation.closer.frames)
        return any(_has_frame(frames, self.frames) for frames in sides)

    def affects(self, version: str) -> bool:
        key = version_key(version)
        if self.affected_from is not None and key < version_key(self.affected_from):
            return False
        return self.fixed_in is None or key < version_key(self.fixed_in)

    def advice(self, version: str) -> str:
        remedy = self.remedy or f"raise the floor to >={self.fixed_in}"
        fixed = f"fixed in {self.fixed_in}" if self.fixed_in else "no fixed release"
        return f"{self.name} {version} is affected by {self.issue}, {fixed}: {remedy}"


def _has_frame(frames: Iterable[Frame], patterns: tuple[tuple[str, str], ...]) -> bool:
    for frame in frames:
        path = frame.filename.replace(os.sep, "/")
        for suffix, function in patterns:
            # Python 3.10 code objects have no qualname: only the last part.
            if frame.function in (function, function.rpartition(".")[2]) and path.endswith(
                suffix
            ):
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
            )
            for bound in (bug.affected_from, bug.fixed_in):
                if bound is not None:
                    version_key(bound)
            if not bug.frames or not bug.distributions:
                raise ValueError("frames and distributions must not be empty")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{DATA_FILE}: entry {i}: {exc!r}") from None
        bugs.append(bug)
    return tuple(bugs)


@functools.lru_cache(maxsize=1)
def known_bugs() -> tuple[KnownBug, ...]:
    """The shipped table, read once."""
    # Imported here, at the first violation: importlib.resources/metadata
    # weigh ~1 MiB, which a process that never breaks a scope need not pay.
    from importlib import resources

    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse(json.loads(text))


@functools.lru_cache(maxsize=256)
def installed_version(distributions: tuple[str, ...]) -> str | None:
    """Version of the first of ``distributions`` that is installed (cached: the
    code already imported does not change when the files on disk do)."""
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def match(violation: Violation, bugs: Iterable[KnownBug]) -> str | None:
    """Advice of the first entry whose frames and installed version both match."""
    for bug in bugs:
        if not bug.matches_stack(violation):
            continue
        version = installed_version(bug.distributions)
        if version is None:
            continue
        try:
            affected = bug.affects(version)
        except ValueError:
            continue  # an installed version we cannot order: say nothing
        if affected:
            return bug.advice(version)
    return None


def advise(violation: Violation) -> str | None:
    """Advice for a violation that matches a known upstream bug, else None."""
    try:
        return match(violation, known_bugs())
    except Exception:
        # Advice is a bonus: never let it cost the report itself.
        return None
