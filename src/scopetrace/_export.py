"""Where reports go: the application's OTel providers, or the embedded exporter.

Decided at report time, never at install time: an application may configure
OpenTelemetry after scopetrace was installed, and scopetrace must never set the
global providers itself while the application still might.
"""

from __future__ import annotations

import sys
from typing import Any

from opentelemetry import metrics, trace

from . import __version__
from ._config import Options
from ._violation import Violation


def tracing_configured() -> bool:
    """True once the application set a global tracer provider."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class Sink:
    """Chooses the tracer and meter for each report, and writes the fallback."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def tracer(self) -> Any:
        return trace.get_tracer("scopetrace", __version__)

    def meter(self) -> Any:
        return metrics.get_meter("scopetrace", __version__)

    def write(self, violation: Violation) -> None:
        """The embedded exporter, used when the application configured no tracing."""
        if tracing_configured():
            return
        if self.options.exporter == "console":
            print(violation.format(), file=sys.stderr, flush=True)

    def flush(self) -> None:
        pass
