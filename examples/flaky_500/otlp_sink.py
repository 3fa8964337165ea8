"""A minimal OTLP/HTTP trace receiver: see violation spans without Tempo or Jaeger.

Run it, point the service at it, and it prints one line per
``anyio.cancel_scope.violation`` span (and a line per HTTP 500 server span)::

    python examples/flaky_500/otlp_sink.py --port 4318
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 SCOPETRACE=1 \\
        python examples/flaky_500/service.py

It accepts protobuf ``POST /v1/traces`` (what the Python OTLP/HTTP exporter
sends), listens on 127.0.0.1 only, and keeps the decoded spans in memory: the
end-to-end tests use :class:`TraceSink` to receive the service's spans.
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

# The sink is a tool, not the traced service: it may read scopetrace's names.
from scopetrace import semconv


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    Span(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        resource=resource,
                        status_code=s.status.code,
                        events=[
                            (e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                            for e in s.events
                        ],
                    )
                )
    return spans


class TraceSink:
    """An OTLP/HTTP trace endpoint on 127.0.0.1 that collects decoded spans."""

    def __init__(self, port: int = 0, on_spans: Callable[[list[Span]], None] | None = None):
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self._on_spans = on_spans
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                spans = decode(body)
                with sink._lock:
                    sink.spans.extend(spans)
                if sink._on_spans is not None:
                    sink._on_spans(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TraceSink:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float) -> list[Span]:
        """Poll until ``predicate(spans)`` holds or ``timeout`` passes; return the spans."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if predicate(spans) or time.monotonic() >= deadline:
                return spans
            time.sleep(0.05)


def describe(span: Span) -> str | None:
    a = span.attributes
    if span.name == semconv.VIOLATION_SPAN:
        return (
            f"trace {span.trace_id}: VIOLATION {a.get(semconv.VIOLATION_KIND)} "
            f"({a.get(semconv.VIOLATION_CAUSE)}): scope entered by task "
            f"{a.get(semconv.OPENER_TASK_NAME)!r} at {a.get(semconv.OPENER_SITE)}, "
            f"exited by task {a.get(semconv.CLOSER_TASK_NAME)!r} at "
            f"{a.get(semconv.CLOSER_SITE)}"
        )
    if a.get(HTTP_RESPONSE_STATUS_CODE) == 500:
        return f"trace {span.trace_id}: HTTP 500 {span.name}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()

    def show(spans: list[Span]) -> None:
        for span in spans:
            line = describe(span)
            if line:
                print(line, flush=True)

    with TraceSink(args.port, on_spans=show) as sink:
        print(f"OTLP/HTTP trace sink on {sink.endpoint}/v1/traces (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
