"""Known-bug advisor: match a violation against known upstream culprits."""

from __future__ import annotations

from ._violation import Violation


def advise(violation: Violation) -> str | None:
    """Advice for a violation that matches a known upstream bug, else None."""
    return None
