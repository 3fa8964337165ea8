"""OpenTelemetry auto-instrumentation: ``opentelemetry-instrument python app.py``.

Registered as the ``scopetrace`` entry point of the ``opentelemetry_instrumentor``
group, so ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=scopetrace`` turns it off.
Needs the ``instrumentation`` extra (``opentelemetry-instrumentation``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from . import semconv
from ._config import Options
from ._install import install, uninstall

_OPTIONS = frozenset(field.name for field in dataclasses.fields(Options))


class ScopetraceInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs scopetrace; ``instrument()`` takes the keywords of :func:`scopetrace.install`.

    Other keywords the instrumentation machinery passes (``tracer_provider``,
    ...) are ignored: the providers are looked up at each report.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        # anyio is a dependency of scopetrace itself: nothing extra to check.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        try:
            install(**{k: v for k, v in kwargs.items() if k in _OPTIONS})
        except Exception:
            # Raising here would stop the instrumentors after this one too.
            logging.getLogger(semconv.LOGGER_NAME).warning(
                "scopetrace: could not be installed; the application runs untraced", exc_info=True
            )

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstall()
