"""The embedded exporter of ``SCOPETRACE_EXPORTER=otlp``: a private OTel SDK.

Built at the first report that needs it, on the delivery thread (importing
and building the SDK takes ~100 ms: never on the event loop's).  Never made
the global provider.  The SDK and its exporters read the standard variables
themselves: ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout,
compression, TLS), ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``.

Processes rarely die by returning from ``main``: uvicorn and gunicorn end on
SIGTERM by re-raising it with the default handler, and no ``atexit`` hook runs
then.  So nothing waits for exit: spans are exported by the batch processor
within :data:`SPAN_DELAY` of being made, and the counters by a flusher thread
within :data:`METRIC_DELAY` of changing -- never on a timer while nothing
changes.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any

from .._version import __version__

#: Longest a span waits before it is sent, in seconds.
SPAN_DELAY = 0.2
#: Longest a changed counter waits before it is sent, in seconds.
METRIC_DELAY = 0.2
#: No timer of the SDK's own: metrics are pushed by :meth:`EmbeddedOtlp.nudge`,
#: not on a schedule, and with an infinite interval the reader starts no
#: thread -- which at interpreter shutdown it could not (3.12.0 and 3.12.1
#: refuse new threads in atexit handlers).
_IDLE_INTERVAL_MS = math.inf


def _resource(resource_type: type) -> Any:
    """``Resource.create()``, without its thread pool: the embedded SDK may be
    built while the interpreter shuts down (a violation in ``asyncio.run()``'s
    teardown), when ``concurrent.futures`` can no longer be imported."""
    from opentelemetry.sdk import resources

    try:
        detectors = resources._build_resource_detectors()  # the configured ones
    except Exception:
        detectors = [resources.OTELResourceDetector()]
    resource = resources._DEFAULT_RESOURCE
    for detector in detectors:
        try:
            resource = resource.merge(detector.detect())
        except Exception:
            pass  # a detector that fails is skipped, as the SDK's own loop does
    if not resource.attributes.get(resources.SERVICE_NAME):
        name = "unknown_service" + (
            f":{os.path.basename(sys.executable)}" if sys.executable else ""
        )
        resource = resource.merge(resource_type({resources.SERVICE_NAME: name}))
    return resource


class EmbeddedOtlp:
    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = _resource(Resource)
        # shutdown_on_exit=False: the SDK's own atexit handler would be
        # registered now, at the first report, and so run before handlers
        # registered earlier, while reports can still happen; ours runs last.
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._flusher = threading.Thread(
            target=self._push_metrics, name="scopetrace-otlp-metrics", daemon=True
        )
        self._changed = threading.Event()
        self._stopped = threading.Event()
        try:
            self._flusher.start()
        except RuntimeError:
            # Interpreter shutdown (an atexit handler, 3.12+): no thread can
            # start, so export each span and count as it is made.
            self.threaded = False
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
        else:
            self.threaded = True
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=int(SPAN_DELAY * 1000))
            )
        self.meter_provider = MeterProvider(
            resource=resource,
            metric_readers=[
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(), export_interval_millis=_IDLE_INTERVAL_MS
                )
            ],
            shutdown_on_exit=False,
        )
        self.version = __version__

    def nudge(self) -> None:
        """A counter changed (or a span was made): export soon."""
        if self.threaded:
            self._changed.set()
        else:
            self.flush(5.0)

    def _push_metrics(self) -> None:
        while True:
            self._changed.wait()
            if self._stopped.is_set():
                return
            time.sleep(METRIC_DELAY)  # let a burst finish: one export for it
            self._changed.clear()
            try:
                self.meter_provider.force_flush()
            except Exception:
                pass

    def flush(self, timeout: float) -> None:
        millis = max(1, int(timeout * 1000))
        self.tracer_provider.force_flush(millis)
        self.meter_provider.force_flush(millis)

    def shutdown(self, timeout: float) -> None:
        """Export what is pending and stop, within ``timeout`` seconds: a
        collector that never answers must not hold the process at exit."""
        self._stopped.set()
        self._changed.set()
        done = threading.Event()

        def stop() -> None:
            try:
                self.tracer_provider.shutdown()
                self.meter_provider.shutdown(timeout_millis=max(1, int(timeout * 1000)))
            except Exception:
                pass
            done.set()

        try:
            threading.Thread(target=stop, name="scopetrace-otlp-shutdown", daemon=True).start()
        except RuntimeError:  # interpreter shutdown: no thread can start
            stop()
        done.wait(timeout)
