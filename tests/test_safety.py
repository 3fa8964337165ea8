"""Do no harm: fail open, bounded memory and output, threads, privacy."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import logging
import sys
import threading
import tracemalloc
from typing import Any

import anyio
import anyio.from_thread
import pytest
from anyio._backends import _asyncio
from opentelemetry.sdk.trace import SpanProcessor

import scopetrace
from scopetrace import Report, semconv
from scopetrace._install import current_runtime
from scopetrace._ratelimit import RateLimiter

from .conftest import Reports

from . import scenarios
from .conftest import Telemetry


def _listen() -> list[Report]:
    runtime = current_runtime()
    assert runtime is not None
    seen = Reports(violations_only=True)
    runtime.reporter.listeners.append(seen.add)
    return seen


def _outcome(scenario: Any, backend: Any = ("asyncio", {})) -> Any:
    caught, ended = scenarios.run(scenario, backend)
    return [scenarios.shape(e) for e in caught], scenarios.shape(ended)


# -- fail-open ---------------------------------------------------------------------


class _ExplodingProcessor(SpanProcessor):
    def on_end(self, span: Any) -> None:
        raise OSError("exporter down")


def test_exporter_that_raises(
    backend: Any, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    plain = _outcome(scenarios.sibling_gather, backend)
    telemetry.tracer_provider.add_span_processor(_ExplodingProcessor())
    scopetrace.install(exporter="none")
    with caplog.at_level(logging.WARNING, logger=semconv.LOGGER_NAME):
        traced = _outcome(scenarios.sibling_gather, backend)
        traced_again = _outcome(scenarios.sibling_gather, backend)
    assert traced == plain == traced_again
    runtime = current_runtime()
    # Each run: the opener's orphan warning, then the violation; both exports fail.
    assert runtime is not None and runtime.internal_errors == 4
    internal = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(internal) == 1  # logged once, then only counted
    assert sum(p.value for p in telemetry.counter_points(semconv.INTERNAL_ERRORS_METRIC)) == 4
    # The counter of violations was updated before the exporter failed.
    (violations,) = telemetry.counter_points(semconv.VIOLATIONS_METRIC)
    assert violations.value == 2


class _HostileCoroutine(collections.abc.Coroutine):  # type: ignore[type-arg]
    """Drives a real coroutine, but its name and repr raise."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self._coro.__await__()

    def __getattr__(self, name: str) -> Any:
        if name == "__qualname__":
            raise RuntimeError("hostile __qualname__")
        raise AttributeError(name)

    def __repr__(self) -> str:
        raise RuntimeError("hostile __repr__")


def _closed_by_another_task(
    wrap: Any = lambda coro: coro, name: str | None = None
) -> scenarios.Scenario:
    """This task enters a scope; a task made of ``wrap(coroutine)``, named
    ``name``, tries to exit it; then this task exits it properly."""

    async def scenario(caught: list[BaseException]) -> None:
        scope = anyio.CancelScope()
        scope.__enter__()

        async def closer() -> None:
            try:
                scope.__exit__(None, None, None)
            except RuntimeError as exc:
                caught.append(exc)

        await asyncio.get_running_loop().create_task(wrap(closer()), name=name)
        scope.__exit__(None, None, None)

    return scenario


_hostile_closer = _closed_by_another_task(wrap=_HostileCoroutine)


def test_task_whose_coroutine_name_raises() -> None:
    plain = _outcome(_hostile_closer)
    scopetrace.install(exporter="none")
    seen = _listen()
    assert _outcome(_hostile_closer) == plain
    (v,) = seen
    assert v.closer.coroutine == "_HostileCoroutine"
    runtime = current_runtime()
    assert runtime is not None and runtime.internal_errors == 0


def test_anyio_internal_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _outcome(scenarios.sibling_gather)
    original = _asyncio.CancelScope.__dict__["__exit__"]
    monkeypatch.delattr(_asyncio, "_task_states")  # an anyio that changed shape
    scopetrace.install(exporter="none")
    runtime = current_runtime()
    assert runtime is not None and runtime.internal_errors == 1
    assert _asyncio.CancelScope.__dict__["__exit__"] is original  # left alone
    monkeypatch.undo()
    assert _outcome(scenarios.sibling_gather) == plain


# -- violation storms -----------------------------------------------------------------

STORM = 50_000


async def _storm(count: int) -> None:
    for _ in range(count):
        outer, inner = anyio.CancelScope(), anyio.CancelScope()
        outer.__enter__()
        inner.__enter__()
        try:
            outer.__exit__(None, None, None)
        except RuntimeError:
            pass
        inner.__exit__(None, None, None)
        outer.__exit__(None, None, None)


def test_storm_exports_a_bounded_number_of_spans(telemetry: Telemetry) -> None:
    scopetrace.install(exporter="none", rate_limit=10)
    anyio.run(_storm, STORM)
    (point,) = telemetry.counter_points(semconv.VIOLATIONS_METRIC)
    assert point.value == STORM  # the counter stays exact
    spans = telemetry.finished(semconv.VIOLATION_SPAN)
    # A burst of 10, then 10 a second for as long as the storm lasted.
    assert 10 <= len(spans) <= 10 + 10 * 60


def test_next_span_carries_the_suppressed_count(telemetry: Telemetry) -> None:
    """Regression: with the key counted as quiet as soon as its next report
    could be let through, the delivery thread could take the 99 as a
    held-back line before the next report came (CPython 3.15 in CI), so the
    next span carried no count.  Its clock is the limiter's, so 1.5 s on it
    is past one refill interval and short of quiet (two) on both threads."""
    scopetrace.install(exporter="none", rate_limit=1)
    runtime = current_runtime()
    assert runtime is not None
    now = [1000.0]
    runtime.reporter.limiter._clock = lambda: now[0]
    anyio.run(_storm, 100)
    now[0] += 1.5
    anyio.run(_storm, 1)
    spans = telemetry.finished(semconv.VIOLATION_SPAN)
    assert len(spans) == 2
    assert semconv.SUPPRESSED not in spans[0].attributes
    assert spans[1].attributes[semconv.SUPPRESSED] == 99


def test_a_key_is_quiet_only_after_two_refill_intervals() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [0, None, None]
    now[0] = 1.5  # the next one would be let through: not quiet yet
    assert limiter.quiet() == []
    now[0] = 2.0
    assert limiter.quiet() == [("a", 2)]
    assert limiter.quiet(0.0) == []  # taken once


def test_rate_limiter_keys_are_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, max_keys=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [0, 0, None, None]
    now[0] += 1.0  # two tokens back
    assert limiter.allow("a") == 2 and limiter.allow("a") == 0
    for key in "bcde":
        limiter.allow(key)
    assert len(limiter._buckets) == 3
    assert RateLimiter(rate=0).allow("x") == 0  # 0 = unlimited


# -- bounded memory ---------------------------------------------------------------------


def _scopetrace_bytes(snapshot: tracemalloc.Snapshot) -> int:
    filtered = snapshot.filter_traces([tracemalloc.Filter(True, "*scopetrace*")])
    return sum(stat.size for stat in filtered.statistics("filename"))


async def _pairs(count: int) -> None:
    for _ in range(count):
        with anyio.CancelScope():
            pass


@pytest.mark.slow
def test_a_million_pairs_do_not_grow_memory() -> None:
    scopetrace.install(exporter="none")
    anyio.run(_pairs, 1000)  # warm caches
    gc.collect()
    tracemalloc.start()
    try:
        before = _scopetrace_bytes(tracemalloc.take_snapshot())
        anyio.run(_pairs, 1_000_000)
        gc.collect()
        after = _scopetrace_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024
    runtime = current_runtime()
    assert runtime is not None and len(runtime.records) == 0


async def _leak_scopes(count: int) -> None:
    async def leaker() -> None:
        anyio.CancelScope().__enter__()  # never exited; the task then ends

    for start in range(0, count, 1000):
        await asyncio.gather(*(leaker() for _ in range(min(1000, count - start))))


@pytest.mark.slow
def test_never_exited_scopes_are_capped() -> None:
    cap = 1_000
    scopetrace.install(exporter="none", max_open_scopes=cap)
    runtime = current_runtime()
    assert runtime is not None
    gc.collect()
    # Each leaking task gets an orphan warning: pytest's log capture would keep
    # those records (not scopetrace), so keep them out of the measurement.
    logger = logging.getLogger(semconv.LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    tracemalloc.start()
    try:
        before = _scopetrace_bytes(tracemalloc.take_snapshot())
        anyio.run(_leak_scopes, 100_000)
        gc.collect()
        after = _scopetrace_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
        logger.setLevel(level)
    assert len(runtime.records) <= cap
    assert after - before <= cap * 1024  # well under 1 KB a record, and no more records


# -- threads and loops ---------------------------------------------------------------------


def test_loops_in_threads_attribute_each_violation(backend: Any) -> None:
    scopetrace.install(exporter="none")
    seen = _listen()
    barrier = threading.Barrier(4)
    tasks_by_thread: dict[str, set[int]] = {}

    async def scenario(caught: list[BaseException]) -> None:
        await anyio.to_thread.run_sync(barrier.wait)  # all four loops run at once
        mine = tasks_by_thread.setdefault(threading.current_thread().name, set())
        conn = scenarios.RefCounted()
        turns = scenarios.InTurn(4)

        async def call(idx: int) -> None:
            mine.add(anyio.get_current_task().id)
            try:
                async with conn:
                    await turns.turn(idx)
            except RuntimeError as exc:
                caught.append(exc)
            finally:
                turns.left(idx)

        await scenarios.plain_tasks(*(lambda i=i: call(i) for i in range(4)))

    threads = [
        threading.Thread(target=scenarios.run, args=(scenario, backend), name=f"loop-{i}")
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 4
    assert sorted(v.thread_name for v in seen) == [f"loop-{i}" for i in range(4)]
    for v in seen:
        assert {v.opener.id, v.closer.id} <= tasks_by_thread[v.thread_name]
        assert v.thread_id != threading.get_ident()


def test_blocking_portal() -> None:
    scopetrace.install(exporter="none")
    seen = _listen()
    caught: list[BaseException] = []
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(scenarios.sibling_gather, caught)
        portal_thread = portal.call(lambda: threading.current_thread().name)
    assert len(caught) == 1
    (v,) = seen
    assert v.thread_name == portal_thread != threading.current_thread().name


# -- privacy and size caps --------------------------------------------------------------------


async def _with_secrets(caught: list[BaseException]) -> None:
    scope = anyio.CancelScope()
    entered, closed = anyio.Event(), anyio.Event()

    async def opener(password: str) -> None:
        api_key = "AKIA-SECRET-LOCAL"  # noqa: F841 - must never be reported
        scope.__enter__()
        entered.set()
        await closed.wait()

    async def closer(token: str) -> None:
        await entered.wait()
        try:
            scope.__exit__(None, None, None)
        except RuntimeError as exc:
            caught.append(exc)
        closed.set()

    await scenarios.plain_tasks(
        lambda: opener("hunter2-SECRET-ARG"), lambda: closer("SECRET-TOKEN-ARG")
    )


def test_reports_carry_no_values(backend: Any, telemetry: Telemetry) -> None:
    scopetrace.install(exporter="none")
    seen = _listen()
    scenarios.run(_with_secrets, backend)
    (v,) = seen
    (span,) = telemetry.finished(semconv.VIOLATION_SPAN)
    texts = [v.format(), v.note(), repr(dict(span.attributes))]
    for text in texts:
        assert "SECRET" not in text


_long_name = _closed_by_another_task(name="x" * 10_000)


def test_long_names_are_capped() -> None:
    scopetrace.install(exporter="none")
    seen = _listen()
    scenarios.run(_long_name, ("asyncio", {}))
    (v,) = seen
    assert len(v.closer.name) == 256


# -- the two implementations of the asyncio hooks ------------------------------------


@pytest.fixture(params=["c", "python"])
def hooks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C hooks (the default where the accelerator passed its check and
    anyio wraps children) or the Python wrappers (every other case)."""
    from scopetrace import _record
    from scopetrace._install import _anyio_wraps_children

    if request.param == "python":
        # What the backend falls back to when the accelerator is not in use.
        monkeypatch.setattr(_record, "capture", _record._py_capture)
    else:
        speedups = pytest.importorskip("scopetrace._speedups")
        if _record.capture is not speedups.capture or not hasattr(speedups, "ScopeHook"):
            pytest.skip("this build records in Python (no C hooks)")
        if not _anyio_wraps_children():
            pytest.skip("anyio < 4.14: the Python wrappers also watch task-group children")
    return str(request.param)


def test_both_hook_implementations_report_the_same(hooks: str) -> None:
    """The C hooks have no frame of their own: the record must still start at
    the code that entered the scope, and a refused exit's closer at the code
    that exited it, exactly as through the Python wrappers."""
    plain = _outcome(_closed_by_another_task())
    scopetrace.install(exporter="none")
    kind = type(_asyncio.CancelScope.__dict__["__enter__"]).__name__
    assert kind == ("ScopeHook" if hooks == "c" else "function")
    seen = _listen()
    assert _outcome(_closed_by_another_task()) == plain
    (v,) = seen
    # Sites name the qualified name where the code object has one (3.11+).
    outer = "_closed_by_another_task.<locals>." if sys.version_info >= (3, 11) else ""
    inner = outer + "scenario.<locals>." if outer else ""
    assert v.opener.site.endswith(f"in {outer}scenario")
    assert v.closer.site.endswith(f"in {inner}closer")
    runtime = current_runtime()
    assert runtime is not None and runtime.internal_errors == 0 and runtime.records == {}


def test_bookkeeping_errors_fail_open_in_both_hooks(
    hooks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the hooks' own bookkeeping (here the watcher, at a task's
    top-level scope) is counted, never raised into the application."""
    from scopetrace._backends._asyncio import Watcher

    def broken(self: Any, task: Any) -> None:
        raise LookupError("broken watcher")

    monkeypatch.setattr(Watcher, "enter_top", broken)
    monkeypatch.setattr(Watcher, "exit_top", broken)
    plain = _outcome(_closed_by_another_task())
    scopetrace.install(exporter="none")
    seen = _listen()
    assert _outcome(_closed_by_another_task()) == plain
    assert len(seen) == 1  # the violation is still reported
    runtime = current_runtime()
    # The enter and the clean exit of the scenario's top-level scope.
    assert runtime is not None and runtime.internal_errors == 2
