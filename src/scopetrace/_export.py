"""Where reports go: the application's OTel providers, or the embedded exporter.

Decided at report time, never at install time: an application may configure
OpenTelemetry after scopetrace was installed, and scopetrace must never set the
global providers itself while the application still might.

While the application has configured no provider, ``SCOPETRACE_EXPORTER``
chooses the embedded exporter:

``console``  the human-readable report on stderr (the default);
``jsonl``    one JSON object per violation appended to ``SCOPETRACE_JSONL_PATH``
             (see :mod:`scopetrace._jsonl`; ``scopetrace report`` summarises it);
``otlp``     a private OTel SDK exporting spans and metrics over OTLP/HTTP,
             configured by the standard ``OTEL_*`` variables, created at the
             first report and never made the global provider;
``none``     nothing beyond the log record.

Violations often happen while the interpreter shuts down, so everything
embedded is flushed by an ``atexit`` handler registered when scopetrace is
imported: with the start-up hook that is the first handler, which runs last.
"""

from __future__ import annotations

import atexit
import importlib.util
import sys
import threading
import warnings
import weakref
from typing import Any

from opentelemetry import metrics, trace

from . import __version__
from ._config import ConfigWarning, Options, env_name
from ._violation import Violation

_SCOPE = "scopetrace"

try:
    # What get_meter_provider() returns until the application sets one.
    from opentelemetry.metrics._internal import _ProxyMeterProvider
except ImportError:  # pragma: no cover - a future API without the private proxy
    _ProxyMeterProvider = type(metrics.get_meter_provider())  # type: ignore[misc,assignment]


def tracing_configured() -> bool:
    """True once the application set a global tracer provider."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def metrics_configured() -> bool:
    """True once the application set a global meter provider."""
    return not isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)


#: Modules the ``otlp`` exporter imports (the ``otlp`` extra).
_OTLP_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def _chosen_exporter(options: Options) -> str:
    """``options.exporter``, or ``console`` when the ``otlp`` extra is missing."""
    if options.exporter != "otlp":
        return options.exporter
    for name in _OTLP_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            warnings.warn(
                f"scopetrace: {env_name('exporter')}='otlp' needs {name} "
                "(pip install 'scopetrace[otlp]'); reporting on stderr ('console') instead",
                ConfigWarning,
                stacklevel=5,
            )
            return "console"
    return "otlp"


class _Otlp:
    """A private OTel SDK exporting over OTLP/HTTP.

    The SDK and the exporter read the standard variables themselves:
    ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, compression, TLS),
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``.
    """

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()
        # shutdown_on_exit=False: the SDK's own atexit handler would be
        # registered now, at the first violation, and so run before handlers
        # registered earlier, while violations can still happen; ours runs last.
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        # Batched, so that a violation never waits for the network.
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.meter_provider = MeterProvider(
            resource=resource,
            metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())],
            shutdown_on_exit=False,
        )
        self.tracer = self.tracer_provider.get_tracer(_SCOPE, __version__)
        self.meter = self.meter_provider.get_meter(_SCOPE, __version__)

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Export what is pending (bounded by ``OTEL_EXPORTER_OTLP_TIMEOUT``) and stop."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class Sink:
    """Chooses the tracer and meter for each report, and writes the embedded output."""

    def __init__(self, options: Options) -> None:
        self.options = options
        #: The embedded exporter actually used (``otlp`` falls back to ``console``
        #: when its packages are missing).
        self.exporter = _chosen_exporter(options)
        self._lock = threading.Lock()
        self._otlp: _Otlp | None = None
        #: Set once the embedded SDK is shut down or could not start.
        self._otlp_off = False
        self._api_meter: Any = None
        self._said: set[str] = set()
        _live.add(self)

    def _embedded(self) -> _Otlp | None:
        """The embedded OTLP SDK, created at the first report that needs it."""
        if self.exporter != "otlp" or self._otlp_off:
            return None
        with self._lock:
            if self._otlp is None and not self._otlp_off:
                try:
                    self._otlp = _Otlp()
                except Exception as exc:
                    # In an atexit handler no thread can start any more (3.12+).
                    self._otlp_off = True
                    self._say_once(
                        "otlp", f"the OTLP exporter could not start ({type(exc).__name__}: {exc})"
                    )
            return self._otlp

    def tracer(self) -> Any:
        if not tracing_configured():
            embedded = self._embedded()
            if embedded is not None:
                return embedded.tracer
        return trace.get_tracer(_SCOPE, __version__)

    def meter(self) -> Any:
        if not metrics_configured():
            embedded = self._embedded()
            if embedded is not None:
                return embedded.meter
        if self._api_meter is None:
            # A proxy until the application sets a provider, then forwarding
            # to it: the instruments the reporter creates on it stay valid.
            self._api_meter = metrics.get_meter(_SCOPE, __version__)
        return self._api_meter

    def write(self, violation: Violation, attributes: dict[str, Any] | None = None) -> None:
        """The embedded text outputs, used when the application configured no tracing.

        ``attributes``: the span's, when the reporter added to ``violation.attributes()``.
        """
        if tracing_configured():
            return
        exporter = self.exporter
        if exporter == "otlp" and self._embedded() is None:
            exporter = "console"  # shut down already, or could not start: stderr still works
        if exporter == "jsonl":
            try:
                from . import _jsonl  # only the jsonl exporter needs it

                _jsonl.append(self.options.jsonl_path, violation, attributes)
                return
            except OSError as exc:
                self._say_once(
                    "jsonl",
                    f"cannot append to {env_name('jsonl_path')}={self.options.jsonl_path!r} ({exc})",
                )
                exporter = "console"
        if exporter == "console":
            print(violation.format(), file=sys.stderr, flush=True)

    def _say_once(self, key: str, problem: str) -> None:
        # Not warnings.warn: under -W error it would raise, and this runs
        # while the application handles anyio's error.
        if key in self._said:
            return
        self._said.add(key)
        print(f"scopetrace: {problem}; reporting on stderr instead", file=sys.stderr, flush=True)

    def flush(self) -> None:
        """Export what the embedded SDK holds, now."""
        embedded = self._otlp
        if embedded is not None:
            embedded.flush()

    def close(self) -> None:
        """Flush and stop the embedded SDK (at uninstall and at exit).  Never raises."""
        with self._lock:
            self._otlp_off = True
            embedded, self._otlp = self._otlp, None
        _live.discard(self)
        if embedded is not None:
            try:
                embedded.shutdown()
            except Exception:
                pass


_live: weakref.WeakSet[Sink] = weakref.WeakSet()


def _close_all() -> None:
    for sink in list(_live):
        sink.close()


atexit.register(_close_all)
