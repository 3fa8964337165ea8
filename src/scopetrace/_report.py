"""Report a violation: note, span, event, metric, log, and the stderr fallback.

Runs only on the violation path.  Providers are looked up at report time, so an
application that configures OpenTelemetry after ``install()`` is still used.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from . import semconv
from ._advisor import advise
from ._config import Options, log_level_number
from ._export import Sink
from ._ratelimit import RateLimiter
from ._violation import Violation

_log = logging.getLogger(semconv.LOGGER_NAME)
# A library must not print through logging's last-resort handler: the
# application's logging configuration decides where records go.
_log.addHandler(logging.NullHandler())


def _span_of(ctx: Any) -> trace.Span:
    if ctx is None:
        return trace.INVALID_SPAN
    return trace.get_current_span(ctx)


class Reporter:
    def __init__(self, options: Options) -> None:
        self.options = options
        self._level = log_level_number(options)
        #: meter -> {metric name: counter}; a new meter (the application set
        #: its MeterProvider after the first report) gets new counters.
        self._counters: tuple[Any, dict[str, Any]] = (None, {})
        self.sink = Sink(options)
        self.limiter = RateLimiter(options.rate_limit)
        #: Callables given each reported Violation (the pytest plugin is one).
        self.listeners: list[Any] = []

    # -- instruments: looked up at each report, so the app's MeterProvider is used --
    def _counter(self, name: str, unit: str, description: str) -> Any:
        meter = self.sink.meter()
        owner, counters = self._counters
        if owner is not meter:
            counters = {}
            self._counters = (meter, counters)
        counter = counters.get(name)
        if counter is None:
            counter = counters[name] = meter.create_counter(
                name, unit=unit, description=description
            )
        return counter

    def _violations(self) -> Any:
        return self._counter(
            semconv.VIOLATIONS_METRIC,
            "{violation}",
            "anyio cancel scopes exited by the wrong task or out of order",
        )

    def count_internal_error(self, where: str, exc: BaseException | None) -> None:
        counter = self._counter(
            semconv.INTERNAL_ERRORS_METRIC, "{error}", "errors caught inside scopetrace's own code"
        )
        counter.add(1, {"scopetrace.where": where, "exception.type": type(exc).__name__})

    # -- the violation path -----------------------------------------------------
    def handle(self, violation: Violation, exc: BaseException) -> None:
        """Report one violation.  The caller catches anything this raises."""
        advice = advise(violation)
        if advice:
            violation = dataclasses.replace(violation, advice=advice)
        if self.options.exception_notes and hasattr(exc, "add_note"):
            exc.add_note(violation.note())
        self._violations().add(1, violation.metric_attributes())
        for listener in list(self.listeners):
            listener(violation)
        key = (violation.kind, violation.cause, violation.opener.site, violation.closer.site)
        suppressed = self.limiter.allow(key)
        if suppressed is not None:
            self.emit(violation, suppressed)

    def emit(self, violation: Violation, suppressed: int = 0) -> None:
        attrs = violation.attributes()
        if suppressed:
            attrs[semconv.SUPPRESSED] = suppressed
        self._span(violation, attrs)
        self._event(violation, attrs)
        _log.log(
            self._level,
            "%s",
            violation.summary(),
            extra={"scopetrace": attrs, "scopetrace_report": violation.format()},
        )
        self.sink.write(violation, attrs)

    def _span(self, violation: Violation, attrs: dict[str, Any]) -> None:
        opener_span = _span_of(violation.opener_context).get_span_context()
        closer_span = _span_of(violation.closer_context).get_span_context()
        # The span belongs in the trace of the request that saw the error,
        # except for a finalizer task: it inherits the context of whatever
        # dropped the generator, often an unrelated request, so the opener's
        # trace is the meaningful parent there.
        if violation.cause == semconv.CAUSE_ASYNCGEN_FINALIZER:
            parent_ctx, other = violation.opener_context, closer_span
        else:
            parent_ctx, other = violation.closer_context, opener_span
        links = [trace.Link(other)] if other.is_valid else []
        tracer = self.sink.tracer()
        span = tracer.start_span(
            semconv.VIOLATION_SPAN,
            context=parent_ctx if parent_ctx is not None else otel_context.Context(),
            kind=trace.SpanKind.INTERNAL,
            attributes=attrs,
            links=links,
        )
        try:
            if violation.exception is not None:
                span.record_exception(violation.exception, escaped=True)
            span.set_status(trace.Status(trace.StatusCode.ERROR, violation.summary()))
        finally:
            span.end()

    def _event(self, violation: Violation, attrs: dict[str, Any]) -> None:
        current = _span_of(violation.closer_context)
        if current.is_recording():
            current.add_event(semconv.VIOLATION_EVENT, attrs)
