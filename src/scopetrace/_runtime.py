"""The state shared by the hooks while scopetrace is installed.

One :class:`Runtime` exists per ``install()``; the hooks close over it so that
the hot path reads only local and closure variables.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

from . import _capture
from ._config import Options

_log = logging.getLogger("scopetrace")


def otel_context_var() -> ContextVar[Any] | None:
    """The ContextVar behind OpenTelemetry's current context, read without a call chain."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT  # type: ignore[attr-defined]

        var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
        return var if isinstance(var, ContextVar) else None
    except Exception:  # pragma: no cover - opentelemetry-api is a dependency
        return None


#: Stand-in when the OTel runtime context is not the contextvars one.
_NO_OTEL: ContextVar[Any] = ContextVar("scopetrace_no_otel")


class Runtime:
    def __init__(self, options: Options) -> None:
        self.options = options
        #: id(scope) -> record, for scopes entered while installed and not yet exited.
        self.records: dict[int, tuple[Any, ...]] = {}
        self.context_var: ContextVar[Any] = otel_context_var() or _NO_OTEL
        self.capture = _capture.capture
        self.internal_errors = 0
        self._logged_internal = False
        self.reporter: Any = None  # set by _install

    def evict(self) -> None:
        """Drop the oldest records past the cap (scopes that leaked or never exit)."""
        records = self.records
        excess = len(records) - self.options.max_open_scopes
        if excess <= 0:
            return
        # Evict a tenth of the cap at once so that a program that leaks scopes
        # steadily pays for eviction once per many enters, not at every one.
        excess += self.options.max_open_scopes // 10
        for key in _oldest(records, excess):
            records.pop(key, None)

    def internal_error(self, where: str) -> None:
        """Count an error inside scopetrace; log the first one.  Never raises."""
        try:
            self.internal_errors += 1
            exc = sys.exc_info()[1]
            if self.reporter is not None:
                self.reporter.count_internal_error(where, exc)
            if not self._logged_internal:
                self._logged_internal = True
                _log.warning(
                    "scopetrace: internal error in %s (further ones are only counted on "
                    "the scopetrace.internal_errors metric); the application is unaffected",
                    where,
                    exc_info=exc,
                )
        except Exception:
            pass


def _oldest(records: dict[int, Any], n: int) -> list[int]:
    keys = []
    for key in records:
        keys.append(key)
        if len(keys) >= n:
            break
    return keys
