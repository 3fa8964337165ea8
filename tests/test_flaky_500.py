"""End to end: the flaky-500 example service, traced by scopetrace, under real HTTP load.

A real uvicorn process serves examples/flaky_500/service.py on 127.0.0.1 with
scopetrace switched on from outside (the service never imports it); real HTTP
requests go through load.py; the service's spans arrive over OTLP/HTTP at an
in-test receiver.  The buggy variant uses staggered tool latencies, so the
task that opens the shared connection's scope is never the one that closes it
and every request fails: no luck involved.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from scopetrace import semconv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flaky_500"
REQUESTS = 20
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
EXAMPLE_MODULES = ("starlette", "uvicorn", "httpx", "opentelemetry.sdk",
                   "opentelemetry.instrumentation.asgi", "opentelemetry.exporter.prometheus",
                   "opentelemetry.exporter.otlp.proto.http", "opentelemetry.proto", "yaml")


def require_example_dependencies() -> None:
    missing = [m for m in EXAMPLE_MODULES if _missing(m)]
    if missing:
        message = ("the example's dependencies are not installed (missing: "
                   f"{', '.join(missing)}); install them with: pip install -e '.[test,example]'")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


@pytest.fixture(scope="module", autouse=True)
def example_dependencies() -> None:
    require_example_dependencies()


@pytest.fixture(scope="module")
def example():
    """The example's modules (harness, otlp_sink), importable from examples/flaky_500."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import harness
        import otlp_sink

        yield harness, otlp_sink
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def activation(example):
    """``env`` (SCOPETRACE=1, the start-up hook) when the hook is present, else ``launcher``."""
    harness, _ = example
    mode = "env" if harness.startup_hook_active() else "launcher"
    print(f"\nscopetrace activation used by the flaky-500 tests: {mode}")
    return mode


def line_of(text: str) -> int:
    """The line of examples/flaky_500/connections.py holding ``text`` (once)."""
    lines = (EXAMPLE / "connections.py").read_text().splitlines()
    [number] = [i for i, line in enumerate(lines, 1) if text in line]
    return number


SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER


def server_spans(spans):
    from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

    return [s for s in spans if s.kind == SPAN_KIND_SERVER and HTTP_RESPONSE_STATUS_CODE in s.attributes]


def status(span) -> int:
    from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

    return int(span.attributes[HTTP_RESPONSE_STATUS_CODE])


def violations(spans):
    return [s for s in spans if s.name == semconv.VIOLATION_SPAN]


def violation_count(metrics_text: str) -> float:
    """Sum of scopetrace's violation counter in a Prometheus exposition."""
    from opentelemetry.exporter.prometheus._mapping import sanitize_full_name

    name = sanitize_full_name(semconv.VIOLATIONS_METRIC) + "_total"
    return sum(float(m.group(1)) for m in
               re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics_text, re.M))


def test_buggy_service_every_500_trace_holds_the_violation_span(example, activation):
    from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

    harness, otlp_sink = example
    with otlp_sink.TraceSink() as sink, harness.Service(
        fixed=False, activation=activation, otlp_endpoint=sink.endpoint, latency="staggered"
    ) as service:
        result = harness.run_load(service.url, "-n", str(REQUESTS), "-c", "10")
        assert result["requests"] == REQUESTS, result
        assert result["500"] == REQUESTS, (result, service.log()[-3000:])

        spans = sink.wait_for(
            lambda s: len(server_spans(s)) >= REQUESTS and len(violations(s)) >= REQUESTS,
            timeout=20,
        )
        metrics_text = harness.http_get(service.metrics_url)[1].decode()

    failed = [s for s in server_spans(spans) if status(s) == 500]
    assert len(failed) == REQUESTS, f"{len(server_spans(spans))} server spans received"
    found = violations(spans)
    assert len(found) == REQUESTS
    assert violation_count(metrics_text) == REQUESTS

    opened_at = f"connections.py:{line_of('enter_async_context(anyio.create_task_group())')} in "
    closed_at = f"connections.py:{line_of('await stack.aclose()')} in "
    by_trace: dict[str, list] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    for request in failed:
        trace = by_trace[request.trace_id]
        [violation] = violations(trace)  # exactly one violation span in each 500's trace
        a = violation.attributes
        # Both tasks named: the first gather() child opened the scope, the last one closed it.
        assert a[semconv.OPENER_TASK_NAME] == "tool-call-0"
        assert a[semconv.CLOSER_TASK_NAME] == "tool-call-3"
        assert a[semconv.OPENER_TASK_ID] != a[semconv.CLOSER_TASK_ID]
        assert a[semconv.VIOLATION_KIND] == semconv.KIND_WRONG_TASK
        assert a[semconv.VIOLATION_CAUSE] in semconv.CAUSES
        # Both sites point at the lines of the shared connection that enter and exit it.
        assert opened_at in a[semconv.OPENER_SITE] and "__aenter__" in a[semconv.OPENER_SITE]
        assert closed_at in a[semconv.CLOSER_SITE] and "__aexit__" in a[semconv.CLOSER_SITE]
        # It sits in the failing request's trace, under the tool call that closed the scope.
        parent = next(s for s in trace if s.span_id == violation.parent_span_id)
        assert parent.name == "tool_call recent_deploys"
        assert violation.resource.get(SERVICE_NAME) == "flaky-500"


def test_fixed_service_gives_no_errors_and_no_violation_spans(example, activation):
    harness, otlp_sink = example
    with otlp_sink.TraceSink() as sink, harness.Service(
        fixed=True, activation=activation, otlp_endpoint=sink.endpoint, latency="staggered"
    ) as service:
        result = harness.run_load(service.url, "-n", str(REQUESTS), "-c", "10")
        spans = sink.wait_for(lambda s: len(server_spans(s)) >= REQUESTS, timeout=20)
        metrics_text = harness.http_get(service.metrics_url)[1].decode()
        log = service.log()

    assert result["requests"] == REQUESTS
    assert result["500"] == 0 and result["status"] == {"200": REQUESTS}, result
    assert [status(s) for s in server_spans(spans)] == [200] * REQUESTS
    assert violations(spans) == []
    assert violation_count(metrics_text) == 0
    assert "cancel scope" not in log, log[-3000:]


def test_service_does_not_import_scopetrace():
    """The example is switched on from outside: no import, no install() in its code."""
    for path in EXAMPLE.glob("*.py"):
        if path.name in ("harness.py", "otlp_sink.py", "watch.py"):
            continue  # tools around the service, not the service
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+scopetrace", text, re.M), path


def test_load_script_only_targets_loopback(example):
    import subprocess

    out = subprocess.run(
        [sys.executable, str(EXAMPLE / "load.py"), "--url", "http://192.0.2.1/ask", "-n", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and "loopback" in out.stderr


def test_watch_script_runs_the_whole_demo(example, tmp_path):
    """watch.py (the live demo): service, sink, load, status lines, then everything stopped."""
    import subprocess

    harness, _ = example
    out = subprocess.run(
        [sys.executable, str(EXAMPLE / "watch.py"), "--duration", "2", "--latency", "staggered",
         "--no-prometheus", "--interval", "1", "--port", str(harness.free_port()),
         "--metrics-port", str(harness.free_port())],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    load = re.search(r"(\d+) requests in .*: (\d+) x HTTP 500", out.stdout)
    spans = re.search(r"violation spans received: (\d+)", out.stdout)
    assert load and spans, out.stdout
    assert int(load.group(1)) == int(load.group(2)) > 0, out.stdout
    # The demo stops the service with SIGTERM right after the load: every 500
    # still has its violation span, because the service flushes its SDK in its
    # lifespan shutdown (uvicorn re-raises SIGTERM: no atexit hook runs).
    assert int(spans.group(1)) == int(load.group(2)), out.stdout
    assert "VIOLATION wrong_task" in out.stdout
