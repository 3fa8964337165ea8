"""The flaky-500 service: one endpoint, four parallel tool calls, one shared connection.

``GET /ask`` plays an agent turn that fans out four tool calls with
``asyncio.gather()`` over one shared, ref-counted connection to a tool server
on 127.0.0.1 (seed 003's shape).  With the buggy connection (the default) a
share of the requests fail with HTTP 500 ``RuntimeError: Attempted to exit
cancel scope in a different task than it was entered in``; with ``--fixed``
none do.

This file does not import scopetrace.  Run it with ``SCOPETRACE=1`` in the
environment and scopetrace reports every violation through the OpenTelemetry
providers configured below:

* metrics: a MeterProvider with the OpenTelemetry Prometheus exporter, served
  on ``--metrics-port`` (``/metrics``): the HTTP server metrics of the ASGI
  instrumentation and scopetrace's violation counter (with
  ``OTEL_METRICS_EXPORTER=otlp`` they are pushed over OTLP/HTTP instead, e.g.
  to the Collector of dashboards/otel-collector.yaml);
* traces: a TracerProvider exporting OTLP/HTTP when one of the standard
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
  variables is set (e.g. to an OpenTelemetry Collector, Tempo, Jaeger, or
  ``otlp_sink.py``).

Usage::

    SCOPETRACE=1 python examples/flaky_500/service.py --port 8000 --metrics-port 9464
    SCOPETRACE=1 python examples/flaky_500/service.py --fixed

Latencies: ``?latency=random`` (the default, realistic: the opener is usually
the slowest call, so roughly one request in five fails) or
``?latency=staggered`` (call *i* takes (i+1)*20 ms: the opener always finishes
first, so every buggy request fails — used by the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from connections import connection_class  # noqa: E402
import toolserver  # noqa: E402

DEFAULT_SERVICE_NAME = "flaky-500"
TOOLS = ("search_docs", "fetch_ticket", "lookup_customer", "recent_deploys")
LATENCY_MODES = ("random", "staggered")


def latencies(mode: str, rng: random.Random) -> list[float]:
    """Seconds each of the four tool calls takes; call 0 is the one that opens the scope."""
    if mode == "staggered":
        # The opener finishes first, the last call closes: always a violation.
        return [0.02 * (i + 1) for i in range(len(TOOLS))]
    # The first tool (a search) is usually the slowest, so it is usually the
    # last to leave, and the bug stays hidden -- except when another call
    # outlasts it: about 20% of requests.
    return [rng.uniform(0.10, 0.30)] + [rng.uniform(0.02, 0.18) for _ in TOOLS[1:]]


def configure_opentelemetry(host: str, metrics_port: int) -> tuple[Any, Any]:
    """The application's own OTel setup: scopetrace only uses the global providers."""
    # Stable HTTP semantic conventions: http.server.request.duration with
    # http.response.status_code, which the dashboards query.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")

    from opentelemetry import metrics, trace
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prometheus_client import start_http_server

    from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME}
    )
    # OTEL_METRICS_EXPORTER: "prometheus" (the default: scraped on
    # --metrics-port), "otlp" (pushed, e.g. to an OpenTelemetry Collector), or both.
    exporters = {e.strip() for e in os.environ.get("OTEL_METRICS_EXPORTER", "prometheus").split(",")}
    readers: list[Any] = []
    if "prometheus" in exporters:
        start_http_server(metrics_port, addr=host)
        readers.append(PrometheusMetricReader())
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)

    tracer_provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    return meter_provider, tracer_provider


def flush_telemetry() -> None:
    """Export what the application's providers still hold.

    uvicorn ends on SIGTERM by re-raising the signal with its default handler
    once it has shut down: no ``atexit`` handler runs then, and neither does a
    ``finally`` after ``uvicorn.run()``.  What does run is the application's
    lifespan shutdown, so that is where a service that owns its OpenTelemetry
    SDK must flush it -- batched spans would otherwise die with the process.
    """
    from opentelemetry import metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush()


def build_app(*, fixed: bool, default_latency: str, seed: int | None = None) -> Any:
    from opentelemetry import trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    tracer = trace.get_tracer("flaky_500")
    rng = random.Random(seed)
    Connection = connection_class(fixed)
    state: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            state["tools_port"] = await tg.start(toolserver.serve, "127.0.0.1", 0)
            yield
            tg.cancel_scope.cancel()
        # The shutdown half of the lifespan: see flush_telemetry().  In a
        # thread, because exporting blocks on the network.
        await anyio.to_thread.run_sync(flush_telemetry)

    async def tool_call(conn: Any, index: int, delay: float) -> str:
        with tracer.start_as_current_span(f"tool_call {TOOLS[index]}"):
            async with conn:
                return await conn.call(TOOLS[index], delay)

    async def ask(request: Request) -> JSONResponse:
        mode = request.query_params.get("latency", default_latency)
        if mode not in LATENCY_MODES:
            return JSONResponse({"error": f"latency must be one of {LATENCY_MODES}"}, 400)
        conn = Connection("127.0.0.1", state["tools_port"])
        calls = [
            asyncio.create_task(tool_call(conn, i, delay), name=f"tool-call-{i}")
            for i, delay in enumerate(latencies(mode, rng))
        ]
        results = await asyncio.gather(*calls)
        return JSONResponse({"variant": "fixed" if fixed else "buggy", "results": results})

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/ask", ask), Route("/healthz", healthz)], lifespan=lifespan
    )
    return OpenTelemetryMiddleware(app, excluded_urls="healthz")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The flaky-500 example service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=9464,
                        help="port of the Prometheus /metrics endpoint (default 9464)")
    parser.add_argument("--fixed", action="store_true",
                        default=os.environ.get("FLAKY500_FIXED", "") not in ("", "0"),
                        help="use the fixed connection (dedicated owner task); "
                        "also FLAKY500_FIXED=1")
    parser.add_argument("--latency", choices=LATENCY_MODES,
                        default=os.environ.get("FLAKY500_LATENCY", "random"),
                        help="default latency model when the request does not say")
    parser.add_argument("--seed", type=int, default=None, help="seed for random latencies")
    args = parser.parse_args(argv)

    import uvicorn

    meter_provider, tracer_provider = configure_opentelemetry(args.host, args.metrics_port)
    app = build_app(fixed=args.fixed, default_latency=args.latency, seed=args.seed)
    print(
        f"flaky-500 ({'fixed' if args.fixed else 'buggy'}) on http://{args.host}:{args.port}/ask, "
        f"metrics on http://{args.host}:{args.metrics_port}/metrics, "
        f"SCOPETRACE={os.environ.get('SCOPETRACE', '')!r}",
        flush=True,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, loop="asyncio", http="h11",
                    log_level=os.environ.get("FLAKY500_LOG_LEVEL", "warning"))
    finally:
        # Reached on Ctrl-C (SIGINT), not on SIGTERM: the lifespan flushed already.
        tracer_provider.shutdown()
        meter_provider.shutdown()


if __name__ == "__main__":
    main()
