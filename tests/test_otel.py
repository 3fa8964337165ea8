"""The span, event, metric and log record, through a real OTel SDK."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest
from opentelemetry import trace

from scopetrace import semconv

from . import scenarios
from .conftest import Telemetry


async def _two_requests(caught: list[BaseException]) -> None:
    """Request A enters a scope; request B, in another task, exits it."""
    tracer = trace.get_tracer("app")
    scope = anyio.CancelScope()
    entered, closed = anyio.Event(), anyio.Event()

    async def request_a() -> None:
        with tracer.start_as_current_span("request A"):
            scope.__enter__()
            entered.set()
            await closed.wait()

    async def request_b() -> None:
        await entered.wait()
        with tracer.start_as_current_span("request B"):
            try:
                scope.__exit__(None, None, None)
            except RuntimeError as exc:
                caught.append(exc)
        closed.set()

    await scenarios.plain_tasks(request_a, request_b)


def _by_name(spans: list[Any], name: str) -> Any:
    (span,) = [s for s in spans if s.name == name]
    return span


def test_span_parent_link_attributes(backend: Any, traced: Telemetry) -> None:
    caught, _ = scenarios.run(_two_requests, backend)
    assert len(caught) == 1
    spans = traced.finished()
    violation = _by_name(spans, semconv.VIOLATION_SPAN)
    a, b = _by_name(spans, "request A"), _by_name(spans, "request B")

    # Inside the trace of the request that saw the error, linked to the opener's.
    assert violation.parent.span_id == b.context.span_id
    assert violation.context.trace_id == b.context.trace_id
    assert [link.context.span_id for link in violation.links] == [a.context.span_id]
    assert violation.status.status_code is trace.StatusCode.ERROR
    (exc_event,) = [e for e in violation.events if e.name == "exception"]
    assert exc_event.attributes["exception.type"] == "RuntimeError"
    assert exc_event.attributes["exception.message"] == str(caught[0])

    attrs = violation.attributes
    assert attrs[semconv.VIOLATION_KIND] == semconv.KIND_WRONG_TASK
    assert attrs[semconv.VIOLATION_CAUSE] == semconv.CAUSE_SIBLING_TASK
    assert attrs[semconv.BACKEND] == ("trio" if backend[0] == "trio" else "asyncio")
    assert attrs[semconv.OPENER_RUNNING] is True
    for side in ("OPENER", "CLOSER"):
        for field in ("TASK_NAME", "TASK_ID", "TASK_COROUTINE", "STACKTRACE", "SITE"):
            assert attrs[getattr(semconv, f"{side}_{field}")], (side, field)
    assert attrs[semconv.OPENER_SITE].endswith("request_a")
    assert attrs[semconv.CLOSER_SITE].endswith("request_b")
    assert attrs[semconv.OPENER_TASK_ID] != attrs[semconv.CLOSER_TASK_ID]
    assert attrs[semconv.CODE_FUNCTION].endswith("request_b")
    assert attrs[semconv.CODE_FILEPATH] == scenarios.__file__.replace("scenarios", "test_otel")
    assert attrs[semconv.THREAD_NAME] == "MainThread"

    # The same attributes as an event on the closing request's span.
    (event,) = [e for e in b.events if e.name == semconv.VIOLATION_EVENT]
    assert event.attributes[semconv.OPENER_SITE] == attrs[semconv.OPENER_SITE]
    assert event.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_SIBLING_TASK


def test_metric_counts_each_violation(backend: Any, traced: Telemetry) -> None:
    scenarios.run(_two_requests, backend)
    scenarios.run(_two_requests, backend)
    (point,) = traced.counter_points(semconv.VIOLATIONS_METRIC)
    assert point.value == 2
    assert set(point.attributes) == set(semconv.METRIC_ATTRIBUTES)
    assert point.attributes[semconv.VIOLATION_KIND] == semconv.KIND_WRONG_TASK
    assert point.attributes[semconv.OPENER_SITE].endswith("request_a")


def test_log_record(backend: Any, traced: Telemetry, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger=semconv.LOGGER_NAME):
        scenarios.run(_two_requests, backend)
    (record,) = [r for r in caplog.records if r.name == semconv.LOGGER_NAME]
    assert record.levelno == logging.ERROR
    assert "wrong_task (sibling_task)" in record.getMessage()
    assert record.scopetrace[semconv.OPENER_SITE].endswith("request_a")  # type: ignore[attr-defined]
    assert "entering stack" in record.scopetrace_report  # type: ignore[attr-defined]


async def _asyncgen_in_request(caught: list[BaseException]) -> None:
    tracer = trace.get_tracer("app")

    async def query() -> Any:
        async with anyio.create_task_group():
            yield 1
            yield 2

    async def consume() -> None:
        with tracer.start_as_current_span("consumer"):
            async for _ in query():
                break

    import asyncio

    asyncio.get_running_loop().set_exception_handler(
        lambda loop, ctx: caught.append(ctx["exception"])
    )
    with tracer.start_as_current_span("unrelated"):
        await scenarios.plain_tasks(consume)
        for _ in range(20):
            await anyio.sleep(0.005)


def test_asyncgen_finalizer_parents_to_opener(traced: Telemetry) -> None:
    caught, _ = scenarios.run(_asyncgen_in_request, ("asyncio", {}))
    assert len(caught) == 1
    spans = traced.finished()
    violation = _by_name(spans, semconv.VIOLATION_SPAN)
    consumer = _by_name(spans, "consumer")
    assert violation.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_ASYNCGEN_FINALIZER
    assert violation.parent.span_id == consumer.context.span_id


def test_no_sdk_report_readable_on_stderr() -> None:
    program = textwrap.dedent(
        """
        import anyio, scopetrace
        from tests import scenarios
        scopetrace.install()
        caught, _ = scenarios.run(scenarios.sibling_gather, ("asyncio", {}))
        print(f"caught: {type(caught[0]).__name__}: {caught[0]}")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).parent.parent),
    )
    assert proc.returncode == 0, proc.stderr
    assert "caught: RuntimeError: Attempted to exit cancel scope in a different task" in proc.stdout
    assert "scopetrace: anyio cancel scope violation: wrong_task (sibling_task)" in proc.stderr
    assert "entering stack (most recent call last):" in proc.stderr
    assert scenarios.qualname("RefCounted.__aenter__") in proc.stderr


# -- one pipeline for violations and orphan warnings -----------------------------------


def test_a_listener_that_raises_costs_nothing_else(traced: Telemetry, caplog: Any) -> None:
    """Regression (the "One pipeline" issue): a listener that raised skipped the
    span and the log record of a violation."""
    from scopetrace._install import current_runtime

    runtime = current_runtime()
    assert runtime is not None

    def broken(report: Any) -> None:
        raise ValueError("a listener's bug")

    runtime.reporter.listeners.append(broken)
    with caplog.at_level("ERROR", logger=semconv.LOGGER_NAME):
        scenarios.run(scenarios.sibling_gather, ("asyncio", {}))
    assert len(traced.finished(semconv.VIOLATION_SPAN)) == 1
    assert any(r.levelname == "ERROR" and "violation" in r.getMessage() for r in caplog.records)
    assert runtime.internal_errors >= 1


def test_the_orphan_counter_follows_the_meter_in_use(telemetry: Telemetry) -> None:
    """Regression: the orphan counter stayed on the first meter it saw, so counts
    missed the application's provider once one was set."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import scopetrace

    from .conftest import _reset_global_providers

    _reset_global_providers()  # no provider yet: the API's proxy meter
    scopetrace.install(exporter="none")
    kept: list[Any] = []
    main = scenarios.leaking(kept)

    anyio.run(main)
    scopetrace.flush()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)  # the application sets its provider now
    try:
        anyio.run(main)
        scopetrace.flush()
        data = reader.get_metrics_data()
        counted = [
            point.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == semconv.ORPHANED_METRIC for point in m.data.data_points
        ]
        assert counted == [1]  # the second orphan, on the application's provider
    finally:
        provider.shutdown()
        _reset_global_providers()


def test_orphans_reach_the_jsonl_file(tmp_path: Any) -> None:
    """Regression: with exporter=jsonl orphan warnings never reached the file."""
    import json

    import scopetrace
    from scopetrace._sinks import _jsonl

    from .conftest import _reset_global_providers

    _reset_global_providers()
    path = tmp_path / "v.jsonl"
    scopetrace.install(exporter="jsonl", jsonl_path=str(path))
    kept: list[Any] = []
    main = scenarios.leaking(kept)

    anyio.run(main)
    scopetrace.flush()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record[_jsonl.EVENT] == "orphaned"
    assert "leak" in record[_jsonl.ATTRIBUTES][semconv.CULPRIT_SITE]
