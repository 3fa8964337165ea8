"""The state shared by the hooks while scopetrace is installed.

One :class:`Runtime` exists per ``install()``; the hooks close over its parts
so that the hot path reads only local and closure variables.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextvars import ContextVar
from typing import Any

from . import _record, semconv
from ._config import Options

_log = logging.getLogger(semconv.LOGGER_NAME)


def otel_context_var() -> ContextVar[Any] | None:
    """The ContextVar behind OpenTelemetry's current context, read without a call chain."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT

        var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
        return var if isinstance(var, ContextVar) else None
    except Exception:  # pragma: no cover - opentelemetry-api is a dependency
        return None


#: Stand-in when the OTel runtime context is not the contextvars one.
_NO_OTEL: ContextVar[Any] = ContextVar("scopetrace_no_otel")


class Runtime:
    def __init__(
        self, options: Options, tracer_provider: Any = None, meter_provider: Any = None
    ) -> None:
        from ._reporter import Reporter

        self.options = options
        self.records = _record.Records(options.max_open_scopes)
        self.context_var: ContextVar[Any] = otel_context_var() or _NO_OTEL
        self.capture = _record.capture
        self.internal_errors = 0
        self._logged_internal = False
        self._lock = threading.Lock()
        self.reporter = Reporter(options, self.internal_error, tracer_provider, meter_provider)

    def internal_error(self, where: str, exc: BaseException | None = None) -> None:
        """Count an error inside scopetrace (``exc``, by default the one being
        handled); log the first one.  Never raises."""
        try:
            if exc is None:
                exc = sys.exc_info()[1]
            with self._lock:
                self.internal_errors += 1
                first = not self._logged_internal
                self._logged_internal = True
            try:
                self.reporter.count_internal_error(where, exc)
            except Exception:
                pass
            if first:
                _log.warning(
                    "scopetrace: internal error in %s (further ones are only counted on "
                    "the scopetrace.internal_errors metric); the application is unaffected",
                    where,
                    exc_info=exc,
                )
        except Exception:
            pass
