"""scopetrace: find the task that broke an anyio cancel scope.

>>> import scopetrace
>>> scopetrace.install()

Every anyio ``CancelScope`` (and so every task group) then records the task and
stack that entered it; when a scope is exited by another task, or out of
nesting order, scopetrace reports both tasks, both stacks and the likely cause
as an OpenTelemetry span, event, metric and log record, and anyio raises
exactly as before.

PYTEST_DONT_REWRITE: with ``SCOPETRACE=1`` site.py imports this package before
pytest starts (see _scopetrace_startup).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._install import install, is_installed, uninstall
from ._violation import TaskInfo, Violation

__all__ = ["TaskInfo", "Violation", "__version__", "install", "is_installed", "uninstall"]
