"""scopetrace: find the task that broke an anyio cancel scope.

>>> import scopetrace
>>> scopetrace.install()

Every anyio ``CancelScope`` (and so every task group) then records the task and
stack that entered it; when a scope is exited by another task, or out of
nesting order, or a task ends with one still open, scopetrace reports both
tasks, both stacks, the likely cause and the code to fix as an OpenTelemetry
span, event, metric and log record, and anyio raises exactly as before.

PYTEST_DONT_REWRITE: with ``SCOPETRACE=1`` site.py imports this package before
pytest starts (see _scopetrace_startup).
"""

from __future__ import annotations

from ._install import flush, install, is_installed, uninstall
from ._report import Blocker, Culprit, Fixture, Report, TaskInfo
from ._version import __version__

__all__ = [
    "Blocker",
    "Culprit",
    "Fixture",
    "Report",
    "TaskInfo",
    "__version__",
    "flush",
    "install",
    "is_installed",
    "uninstall",
]
