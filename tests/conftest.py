"""Shared fixtures: the backends every scenario runs on, and a real OTel SDK."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import scopetrace


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    return loop


def _backends() -> list[Any]:
    params: list[Any] = [pytest.param(("asyncio", {}), id="asyncio")]
    if sys.version_info >= (3, 12):
        params.append(
            pytest.param(("asyncio", {"loop_factory": _eager_loop}), id="asyncio-eager")
        )
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    else:
        params.append(pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio-uvloop"))
    params.append(pytest.param(("trio", {}), id="trio"))
    return params


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(backend name, backend options) for ``anyio.run``."""
    return request.param


class Telemetry:
    """A real OTel SDK set as the global providers, with in-memory exporters."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self, name: str | None = None) -> list[Any]:
        scopetrace.flush()  # spans are made on scopetrace's delivery thread
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def counter_points(self, metric_name: str) -> list[Any]:
        scopetrace.flush()
        data = self.reader.get_metrics_data()
        points = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric_name:
                        points.extend(m.data.data_points)
        return points


def _reset_global_providers() -> None:
    # The OTel API allows setting the global providers once per process; tests
    # need a fresh SDK each, so reset the set-once guards (test-only).
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    metrics._internal._METER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    metrics._internal._METER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Install a real OTel SDK globally for one test, and remove it after."""
    t = Telemetry()
    _reset_global_providers()
    trace.set_tracer_provider(t.tracer_provider)
    metrics.set_meter_provider(t.meter_provider)
    try:
        yield t
    finally:
        t.tracer_provider.shutdown()
        t.meter_provider.shutdown()
        _reset_global_providers()


@pytest.fixture
def traced(telemetry: Telemetry) -> Iterator[Telemetry]:
    """scopetrace installed (fresh) with a real SDK configured."""
    scopetrace.uninstall()
    scopetrace.install()
    try:
        yield telemetry
    finally:
        scopetrace.uninstall()


@pytest.fixture(autouse=True)
def _never_left_installed() -> Iterator[None]:
    from scopetrace import _config

    _config._warned.clear()  # each test sees its own one-time warnings
    yield
    scopetrace.uninstall()


class Reports(list):  # type: ignore[type-arg]
    """The reports a listener collected; reading it first waits until every
    report made so far was delivered (delivery runs on a background thread)."""

    def __init__(self, violations_only: bool) -> None:
        super().__init__()
        self.violations_only = violations_only

    def add(self, report: Any) -> None:
        if report.is_violation or not self.violations_only:
            list.append(self, report)

    def _sync(self) -> None:
        scopetrace.flush()

    def __len__(self) -> int:
        self._sync()
        return list.__len__(self)

    def __iter__(self) -> Any:
        self._sync()
        return list.__iter__(self)

    def __getitem__(self, index: Any) -> Any:
        self._sync()
        return list.__getitem__(self, index)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other: object) -> bool:
        self._sync()
        return list.__eq__(self, other)  # type: ignore[arg-type]


def listen(violations_only: bool = True) -> Reports:
    """Collect the reports of the installed scopetrace (violations only by default)."""
    from scopetrace._install import current_runtime

    runtime = current_runtime()
    assert runtime is not None
    seen = Reports(violations_only)
    runtime.reporter.listeners.append(seen.add)
    return seen
