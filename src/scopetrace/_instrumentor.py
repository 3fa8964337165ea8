"""OpenTelemetry auto-instrumentation: ``opentelemetry-instrument python app.py``.

Registered as the ``scopetrace`` entry point of the ``opentelemetry_instrumentor``
group, so ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=scopetrace`` turns it off.
Needs the ``instrumentation`` extra (``opentelemetry-instrumentation``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from . import semconv
from ._config import PARSERS
from ._install import install, is_installed, uninstall


class ScopetraceInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs scopetrace, as every contrib instrumentation does.

    ``instrument(tracer_provider=..., meter_provider=...)`` sends spans and
    counters to those providers instead of the global ones; the other
    keywords are :func:`scopetrace.install`'s options.  ``uninstrument()``
    restores anyio's methods (and undoes an install this instrumentor made;
    one made by the application itself is left alone).
    """

    _installed_by_us = False

    def instrumentation_dependencies(self) -> Collection[str]:
        # anyio is a dependency of scopetrace itself: nothing extra to check.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k in PARSERS}
        if is_installed():
            # SCOPETRACE=1 (or the application) installed it already; with
            # other providers, install again with them.
            if kwargs.get("tracer_provider") is None and kwargs.get("meter_provider") is None:
                return
            uninstall()
        try:
            install(
                tracer_provider=kwargs.get("tracer_provider"),
                meter_provider=kwargs.get("meter_provider"),
                **options,
            )
            type(self)._installed_by_us = True
        except Exception:
            # Raising here would stop the instrumentors after this one too.
            logging.getLogger(semconv.LOGGER_NAME).warning(
                "scopetrace: could not be installed; the application runs untraced", exc_info=True
            )

    def _uninstrument(self, **kwargs: Any) -> None:
        if type(self)._installed_by_us:
            type(self)._installed_by_us = False
            uninstall()
