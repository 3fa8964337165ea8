"""A real OTLP/HTTP receiver on 127.0.0.1, for tests of what exporters send.

It decodes ``/v1/traces``, ``/v1/metrics`` and ``/v1/logs`` requests
(protobuf or JSON, plain or gzip/deflate) with ``opentelemetry-proto`` into
plain Python values::

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, ...}
        subprocess.run([...], env=env)
        span = receiver.wait_for_span(semconv.VIOLATION_SPAN)
        assert span.attributes[semconv.VIOLATION_KIND] == "wrong_task"
        assert span.resource["service.name"] == "my-service"

Every wait is bounded: it returns as soon as the item arrives, or fails with
what did arrive.
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

T = TypeVar("T")

#: path -> (request type, response type)
_SERVICES: dict[str, tuple[type[Message], type[Message]]] = {
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}


def value_of(any_value: Any) -> Any:
    """An OTLP ``AnyValue`` as a Python value."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def attributes_of(key_values: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in key_values}


@dataclasses.dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class DataPoint:
    metric: str
    #: "sum", "gauge", "histogram", ...
    type: str
    #: The value (sums and gauges) or the count (histograms).
    value: float
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclasses.dataclass(frozen=True)
class LogRecord:
    body: Any
    severity_text: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]


def _spans(req: Any) -> list[Span]:
    out = []
    for rs in req.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    Span(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes=attributes_of(s.attributes),
                        resource=resource,
                        scope=ss.scope.name,
                        status_code=s.status.code,
                        status_message=s.status.message,
                        events=[(e.name, attributes_of(e.attributes)) for e in s.events],
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    )
                )
    return out


def _points(req: Any) -> list[DataPoint]:
    out = []
    for rm in req.resource_metrics:
        resource = attributes_of(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                for p in getattr(m, kind).data_points:
                    if kind in ("sum", "gauge"):
                        which = p.WhichOneof("value")
                        value = float(getattr(p, which)) if which else 0.0
                    else:
                        value = float(p.count)
                    out.append(
                        DataPoint(m.name, kind, value, attributes_of(p.attributes), resource, sm.scope.name)
                    )
    return out


def _logs(req: Any) -> list[LogRecord]:
    out = []
    for rl in req.resource_logs:
        resource = attributes_of(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                out.append(LogRecord(value_of(r.body), r.severity_text, attributes_of(r.attributes), resource))
    return out


class OtlpReceiver:
    """An OTLP/HTTP server on a free port of 127.0.0.1, recording what it decodes."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.points: list[DataPoint] = []
        self.logs: list[LogRecord] = []
        self.requests: list[Request] = []
        #: Bodies that could not be decoded (a test should expect none).
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    # -- lifecycle ----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Base URL, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (exporters append ``/v1/...``)."""
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- waiting --------------------------------------------------------------------
    def wait_for(self, find: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
        """The first non-None ``find()``, re-evaluated as requests arrive, within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = find()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"OTLP receiver: no {what or 'match'} within {timeout}s; received spans "
                        f"{[s.name for s in self.spans]}, metrics {sorted({p.metric for p in self.points})}, "
                        f"{len(self.logs)} log record(s), errors {self.errors}"
                    )
                self._cond.wait(left)

    def spans_named(self, name: str) -> list[Span]:
        with self._cond:
            return [s for s in self.spans if s.name == name]

    def points_of(self, metric: str) -> list[DataPoint]:
        with self._cond:
            return [p for p in self.points if p.metric == metric]

    def wait_for_span(self, name: str, timeout: float = 15.0) -> Span:
        return self.wait_for(lambda: next(iter(self.spans_named(name)), None), timeout, f"span {name!r}")

    def wait_for_point(self, metric: str, timeout: float = 15.0) -> DataPoint:
        return self.wait_for(lambda: next(iter(self.points_of(metric)), None), timeout, f"metric {metric!r}")

    # -- serving --------------------------------------------------------------------
    def _record(self, path: str, headers: dict[str, str], req: Any) -> None:
        with self._cond:
            self.requests.append(Request(path, headers))
            if path == "/v1/traces":
                self.spans.extend(_spans(req))
            elif path == "/v1/metrics":
                self.points.extend(_points(req))
            else:
                self.logs.extend(_logs(req))
            self._cond.notify_all()

    def _error(self, text: str) -> None:
        with self._cond:
            self.errors.append(text)
            self._cond.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                service = _SERVICES.get(self.path.split("?")[0])
                if service is None:
                    self._reply(404, b"", "text/plain")
                    return
                request_type, response_type = service
                is_json = "json" in (self.headers.get("Content-Type") or "")
                try:
                    encoding = (self.headers.get("Content-Encoding") or "").lower()
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    req = request_type()
                    if is_json:
                        json_format.Parse(body.decode("utf-8"), req)
                    else:
                        req.ParseFromString(body)
                except (DecodeError, json_format.ParseError, OSError, zlib.error, ValueError) as exc:
                    receiver._error(f"{self.path}: {type(exc).__name__}: {exc}")
                    self._reply(400, b"", "text/plain")
                    return
                receiver._record(self.path, {k.lower(): v for k, v in self.headers.items()}, req)
                response = response_type()
                if is_json:
                    self._reply(200, json_format.MessageToJson(response).encode(), "application/json")
                else:
                    self._reply(200, response.SerializeToString(), "application/x-protobuf")

            def _reply(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean

        return Handler
