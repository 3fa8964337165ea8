"""OpenTelemetry: the span and the counter of each report.

Providers are chosen at each report, never at install time: those passed to
``install()`` (or the instrumentor), else the application's global ones once
it has set them (an application may configure OpenTelemetry after scopetrace
was installed), else the embedded OTLP exporter when ``SCOPETRACE_EXPORTER``
is ``otlp``.  scopetrace never sets the global providers itself.

Runs on the delivery thread, so spans are created after the fact: their
times, parent and links are the ones recorded when the report was made.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from .. import semconv
from .._report import Report
from .._version import __version__

_SCOPE = "scopetrace"

try:
    # What get_meter_provider() returns until the application sets one.
    from opentelemetry.metrics._internal import _ProxyMeterProvider
except ImportError:  # pragma: no cover - a future API without the private proxy
    _ProxyMeterProvider = type(metrics.get_meter_provider())  # type: ignore[misc,assignment]


def _is_shut_down(provider: Any) -> bool:
    """Best effort: an SDK provider the application has shut down drops
    everything it is given, so reports go to the embedded outputs instead."""
    if getattr(provider, "_shutdown", False) is True:  # SDK MeterProvider
        return True
    processor = getattr(provider, "_active_span_processor", None)  # SDK TracerProvider
    processors = getattr(processor, "_span_processors", None)
    if not processors:
        return False
    for p in processors:
        batch = getattr(p, "_batch_processor", p)
        if not (
            getattr(batch, "_shutdown", False) is True or getattr(batch, "done", False) is True
        ):
            return False
    return True


def app_tracer_provider() -> Any:
    """The application's global tracer provider, or None while it has set none."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider) or _is_shut_down(provider):
        return None
    return provider


def app_meter_provider() -> Any:
    provider = metrics.get_meter_provider()
    if isinstance(provider, _ProxyMeterProvider) or _is_shut_down(provider):
        return None
    return provider


def tracing_configured() -> bool:
    """True once the application set a global tracer provider (and it is not shut down)."""
    return app_tracer_provider() is not None


def metrics_configured() -> bool:
    return app_meter_provider() is not None


class Signals:
    """Spans and counters for reports, to whichever providers are in use."""

    def __init__(
        self, exporter: str, tracer_provider: Any = None, meter_provider: Any = None
    ) -> None:
        self.exporter = exporter
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._embedded: Any = None
        self._embedded_off = False
        self._lock = threading.Lock()
        #: provider -> {metric name: counter}, for the last provider used
        self._instruments: tuple[Any, dict[str, Any]] = (None, {})
        #: scope key -> span context of its orphan warning, for the violation's link
        self._orphan_spans: OrderedDict[str, Any] = OrderedDict()

    # -- where to -----------------------------------------------------------------
    def tracer_provider(self) -> Any:
        """The provider a span goes to now, or None for no span."""
        if self._tracer_provider is not None:
            return self._tracer_provider
        provider = app_tracer_provider()
        if provider is not None:
            return provider
        embedded = self.embedded()
        return embedded.tracer_provider if embedded is not None else None

    def meter_provider(self) -> Any:
        if self._meter_provider is not None:
            return self._meter_provider
        provider = app_meter_provider()
        if provider is not None:
            return provider
        embedded = self.embedded()
        if embedded is not None:
            return embedded.meter_provider
        # The API's proxy: forwards to the application's provider once it sets one.
        return metrics.get_meter_provider()

    def app_has_tracing(self) -> bool:
        """Whether spans go to a provider the application chose (then the
        embedded text outputs stay quiet)."""
        return self._tracer_provider is not None or tracing_configured()

    def embedded(self) -> Any:
        """The embedded OTLP SDK, created at its first use (on the delivery thread)."""
        if self.exporter != "otlp" or self._embedded_off or tracing_configured():
            return None
        with self._lock:
            if self._embedded is None and not self._embedded_off:
                from ._otlp import EmbeddedOtlp

                try:
                    self._embedded = EmbeddedOtlp()
                except Exception as exc:
                    self._embedded_off = True
                    _say(
                        f"the OTLP exporter could not start ({type(exc).__name__}: {exc}); "
                        "reporting on stderr instead"
                    )
            return self._embedded

    # -- the signals --------------------------------------------------------------
    def count(self, report: Report, n: int = 1) -> None:
        if report.is_violation:
            name, unit, what = (
                semconv.VIOLATIONS_METRIC,
                "{violation}",
                "anyio cancel scopes exited by the wrong task or out of order",
            )
        else:
            name, unit, what = (
                semconv.ORPHANED_METRIC,
                "{scope}",
                "anyio cancel scopes left open by a task that ended",
            )
        self._counter(name, unit, what).add(n, report.metric_attributes())
        self._touched()

    def count_internal_error(self, where: str, exc: BaseException | None) -> None:
        counter = self._counter(
            semconv.INTERNAL_ERRORS_METRIC, "{error}", "errors caught inside scopetrace's own code"
        )
        counter.add(1, {semconv.INTERNAL_ERROR_WHERE: where, "exception.type": type(exc).__name__})

    def _counter(self, name: str, unit: str, description: str) -> Any:
        provider = self.meter_provider()
        with self._lock:
            owner, counters = self._instruments
            if owner is not provider:
                counters = {}
                self._instruments = (provider, counters)
            counter = counters.get(name)
            if counter is None:
                meter = provider.get_meter(_SCOPE, __version__)
                counter = counters[name] = meter.create_counter(
                    name, unit=unit, description=description
                )
            return counter

    def span(self, report: Report, exc: BaseException | None, suppressed: int = 0) -> None:
        provider = self.tracer_provider()
        if provider is None:
            return
        attrs = report.attributes()
        if suppressed:
            attrs[semconv.SUPPRESSED] = suppressed
        if "logfire" in sys.modules:
            attrs.update(_logfire_attributes(report))
        opener = (
            trace.get_current_span(report.opener_context).get_span_context()
            if report.opener_context
            else None
        )
        closer = (
            trace.get_current_span(report.closer_context).get_span_context()
            if report.closer_context
            else None
        )
        if not report.is_violation or report.cause == semconv.CAUSE_ASYNCGEN_FINALIZER:
            # An orphan belongs to the request that entered the scope.  So does
            # a finalizer's violation: the finalizer task inherits the context
            # of whatever dropped the generator, often an unrelated request.
            parent, other = report.opener_context, closer
        else:
            parent, other = report.closer_context, opener
        links = [trace.Link(other)] if other is not None and other.is_valid else []
        orphan = self._orphan_spans.get(report.scope_key) if report.is_violation else None
        if orphan is not None:
            links.append(trace.Link(orphan, {semconv.INCIDENT_ID: report.incident_id}))
        tracer = provider.get_tracer(_SCOPE, __version__)
        span = tracer.start_span(
            report.signal,
            context=parent if parent is not None else otel_context.Context(),
            kind=trace.SpanKind.INTERNAL,
            attributes=attrs,
            links=links,
            start_time=report.reported_at_ns,
        )
        try:
            if exc is not None:
                span.record_exception(exc, escaped=True, timestamp=report.reported_at_ns)
            if report.is_violation:
                span.set_status(trace.Status(trace.StatusCode.ERROR, report.summary()))
        finally:
            span.end(end_time=report.reported_at_ns)
        if not report.is_violation and report.scope_key:
            self._orphan_spans[report.scope_key] = span.get_span_context()
            while len(self._orphan_spans) > 4096:
                self._orphan_spans.popitem(last=False)
        self._touched()

    def _touched(self) -> None:
        embedded = self._embedded
        if embedded is not None:
            embedded.nudge()

    def flush(self, timeout: float) -> None:
        embedded = self._embedded
        if embedded is not None:
            embedded.flush(timeout)

    def close(self, timeout: float) -> None:
        """Export what the embedded SDK holds and stop it (bounded in time)."""
        with self._lock:
            self._embedded_off = True
            embedded, self._embedded = self._embedded, None
        if embedded is not None:
            embedded.shutdown(timeout)


def add_event(report: Report, attrs: dict[str, Any]) -> None:
    """The report as an event on the span current where it happened, while that
    span is still recording (called on the reporting thread, before it ends)."""
    ctx = report.closer_context if report.is_violation else report.opener_context
    if ctx is None:
        return
    current = trace.get_current_span(ctx)
    if current.is_recording():
        current.add_event(report.signal, attrs, timestamp=report.reported_at_ns)


def _logfire_attributes(report: Report) -> dict[str, Any]:
    """What makes the span read well in Logfire (added while ``logfire`` is imported).

    * ``logfire.msg``, the line Logfire lists: the summary -- kind, cause,
      the culprit with its package and version, both tasks and sites.
      Logfire never scrubs it, while its default scrubber redacts every other
      value containing "session", "auth", ... (any site in
      ``mcp/shared/session.py``);
    * ``logfire.msg_template``: how that line starts, with the attributes it
      names as placeholders: one template per kind of report;
    * ``logfire.level_num``: error (17) for a violation, warn (13) for an
      orphan warning;
    * the culprit's location under the older OpenTelemetry keys
      (``code.filepath``/``code.lineno``/``code.function``), which Logfire
      shows as the source location and never scrubs either.
    """
    fix = f": fix {{{semconv.CULPRIT_SITE}}}" if report.culprit is not None else ""
    if report.is_violation:
        template = (
            f"anyio cancel scope violation: {{{semconv.VIOLATION_KIND}}} "
            f"({{{semconv.VIOLATION_CAUSE}}}){fix}"
        )
    else:
        template = f"anyio cancel scope orphaned (early warning){fix}"
    attrs: dict[str, Any] = {
        semconv.LOGFIRE_MSG: report.summary(),
        semconv.LOGFIRE_MSG_TEMPLATE: template,
        semconv.LOGFIRE_LEVEL_NUM: 17 if report.is_violation else 13,
        semconv.LOGFIRE_TAGS: ["scopetrace", report.kind or "orphaned"],
    }
    frame = report.culprit.frame if report.culprit is not None else None
    if frame is not None:
        attrs[semconv.LOGFIRE_CODE_FILEPATH] = frame.filename
        attrs[semconv.LOGFIRE_CODE_LINENO] = frame.lineno
        attrs[semconv.LOGFIRE_CODE_FUNCTION] = frame.function
    return attrs


def _say(text: str) -> None:
    try:
        print(f"scopetrace: {text}", file=sys.stderr, flush=True)
    except Exception:
        pass
