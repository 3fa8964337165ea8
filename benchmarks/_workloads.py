"""The workloads the overhead benchmark measures, and the tracers it compares.

Every workload is ``async def workload(n) -> float``: it does ``n`` units of
work (one scope pair, one fan-out, one echoed message, one HTTP request, one
violation) and returns the CPU time its measured section took.  Setup that
does not scale with ``n`` (servers, connections, telemetry) happens inside the
same ``anyio.run`` but outside the measured section, so that the instruction
count method (``count(n) - count(0)``) and the CPU-time method see the same
per-unit cost.

A *mode* is what is switched on around a workload: nothing (``plain``),
scopetrace at default settings (``traced``), asyncio debug mode (``debug``) or
the naive ``traceback.extract_stack()`` tracer (``naive``).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

Workload = Callable[[int], Awaitable[float]]

#: Concurrent clients of the echo and HTTP workloads.
CLIENTS = 10
#: Memory runs only (see _measure.run_worker): with the collector's automatic
#: runs off, the HTTP workload collects after every this many requests, so
#: that a peak compares live objects plus one fixed window of garbage, not
#: wherever the collector's thresholds happened to fall in each mode.
COLLECT_EVERY = 0
#: Children of one task-group fan-out.
FAN_OUT = 10
#: Echoed message size in bytes.
MESSAGE = b"x" * 64
#: Generous deadlines: the point is the scope, not the timeout firing.
DEADLINE = 30.0

# -- micro --------------------------------------------------------------------


async def micro_pair(n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        with anyio.CancelScope():
            pass
    return time.process_time() - start


async def move_on_after(n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        with anyio.move_on_after(DEADLINE):
            pass
    return time.process_time() - start


# -- task-group fan-out ------------------------------------------------------------


async def _child() -> None:
    with anyio.move_on_after(DEADLINE):
        await checkpoint()


async def taskgroup(n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        async with anyio.create_task_group() as tg:
            for _ in range(FAN_OUT):
                tg.start_soon(_child)
    return time.process_time() - start


# -- scope-heavy I/O: TCP echo -------------------------------------------------------


async def _receive_exactly(stream: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        with anyio.fail_after(DEADLINE):
            data += await stream.receive(size - len(data))
    return data


async def _echo_handler(stream: Any) -> None:
    async with stream:
        while True:
            try:
                data = await _receive_exactly(stream, len(MESSAGE))
            except anyio.EndOfStream:
                return
            with anyio.fail_after(DEADLINE):
                await stream.send(data)


async def _echo_client(port: int, messages: int, connected: Any) -> None:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        connected.append(stream)
        for _ in range(messages):
            with anyio.fail_after(DEADLINE):
                await stream.send(MESSAGE)
            await _receive_exactly(stream, len(MESSAGE))


async def echo(n: int) -> float:
    """``n`` messages in all, from CLIENTS clients, through an anyio TCP echo server."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as server:
        server.start_soon(listener.serve, _echo_handler)
        connected: list[Any] = []
        start = time.process_time()
        async with anyio.create_task_group() as clients:
            for i in range(CLIENTS):
                clients.start_soon(_echo_client, port, _share(n, i), connected)
        elapsed = time.process_time() - start
        server.cancel_scope.cancel()
    await listener.aclose()
    return elapsed


def _share(n: int, i: int) -> int:
    """Client ``i``'s part of ``n`` units split over CLIENTS clients."""
    return n // CLIENTS + (1 if i < n % CLIENTS else 0)


# -- realistic service: Starlette on uvicorn, called with httpx ------------------------


def _service() -> Any:
    """A small agent-like service: each request fans out to tools in a task group.

    Shaped like the fixed variant of the flaky-500 seed: concurrent tool calls,
    each bounded by ``fail_after``, every scope entered and exited by its own
    task.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def tool(name: str, query: str, results: dict[str, Any]) -> None:
        with anyio.fail_after(DEADLINE):
            await checkpoint()
            results[name] = {"tool": name, "query": query, "score": len(query) * len(name)}

    async def answer(request: Request) -> JSONResponse:
        query = request.query_params.get("q", "")
        results: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            for name in ("search", "lookup", "weather", "calendar"):
                tg.start_soon(tool, name, query, results)
        return JSONResponse({"query": query, "results": [results[k] for k in sorted(results)]})

    return Starlette(routes=[Route("/answer", answer)])


async def realistic(n: int) -> float:
    """``n`` HTTP requests in all, from CLIENTS keep-alive clients."""
    import httpx
    import uvicorn

    config = uvicorn.Config(
        _service(),
        lifespan="off",
        log_level="error",
        access_log=False,
        loop="none",
        # Under valgrind a run is ~50 times slower: keep idle connections open.
        timeout_keep_alive=int(DEADLINE),
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d/answer" % sock.getsockname()[1]
    await server.startup(sockets=[sock])

    done = 0

    async def client(http: Any, i: int, count: int) -> None:
        nonlocal done
        for j in range(count):
            response = await http.get(url, params={"q": f"client {i} request {j}"})
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            done += 1
            if COLLECT_EVERY and done % COLLECT_EVERY == 0:
                gc.collect()

    # One pooled client, connected before the measured section: building a
    # client's SSL context (even for plain HTTP) is no part of a request.
    http = httpx.AsyncClient(
        timeout=DEADLINE,
        verify=False,
        # httpx expires a connection idle for 5 s, and under valgrind a run
        # takes longer: reconnecting inside the measured section is no part
        # of a request.
        limits=httpx.Limits(max_connections=CLIENTS, keepalive_expiry=None),
    )
    try:
        async with anyio.create_task_group() as tg:
            for i in range(CLIENTS):
                tg.start_soon(client, http, i, 1)
        start = time.process_time()
        async with anyio.create_task_group() as tg:
            for i in range(CLIENTS):
                tg.start_soon(client, http, i, _share(n, i))
        elapsed = time.process_time() - start
    finally:
        await http.aclose()
        await server.shutdown(sockets=[sock])
    return elapsed


# -- the violation path ---------------------------------------------------------------


async def _one_violation() -> None:
    """A scope entered by a task that then finishes, and exited by another task.

    A plain asyncio task, not an anyio child: anyio gives each child a cancel
    scope of its own, whose exit would trip over the one left open.
    """
    scope = anyio.CancelScope()

    async def opener() -> None:
        scope.__enter__()

    await asyncio.get_running_loop().create_task(opener())
    try:
        scope.__exit__(None, None, None)
    except RuntimeError:
        pass  # anyio refuses, as it must: the benchmark counts what that costs
    else:  # pragma: no cover - would mean anyio stopped checking ownership
        raise AssertionError("anyio accepted a cancel scope exit from another task")


#: Spans exported by the violation workload's telemetry, read after a run.
_EXPORTER: Any = None


def telemetry() -> Any:
    """A real OTel SDK (in-memory exporters) as the global providers, once per process."""
    global _EXPORTER
    if _EXPORTER is None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        _EXPORTER = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return _EXPORTER


def exported_spans() -> int:
    """Spans exported since the last call (and forget them)."""
    if _EXPORTER is None:
        return 0
    count = len(_EXPORTER.get_finished_spans())
    _EXPORTER.clear()
    return count


async def violations(n: int) -> float:
    telemetry()
    start = time.process_time()
    for _ in range(n):
        await _one_violation()
    return time.process_time() - start


WORKLOADS: dict[str, Workload] = {
    "micro_pair": micro_pair,
    "move_on_after": move_on_after,
    "taskgroup": taskgroup,
    "echo": echo,
    "realistic": realistic,
    "violation": violations,
}

# -- modes ------------------------------------------------------------------------------


class NaiveTracer:
    """What a user would write by hand: the whole stack at every enter, by id."""

    def __init__(self) -> None:
        from anyio._backends import _asyncio

        self.cls = _asyncio.CancelScope
        self.records: dict[int, Any] = {}
        self.original = (self.cls.__dict__["__enter__"], self.cls.__dict__["__exit__"])

    def install(self) -> None:
        original_enter, original_exit = self.original
        records = self.records

        def __enter__(scope: Any) -> Any:
            result = original_enter(scope)
            records[id(scope)] = traceback.extract_stack()
            return result

        def __exit__(scope: Any, *exc_info: Any) -> Any:
            try:
                return original_exit(scope, *exc_info)
            finally:
                records.pop(id(scope), None)

        self.cls.__enter__ = __enter__
        self.cls.__exit__ = __exit__

    def uninstall(self) -> None:
        self.cls.__enter__, self.cls.__exit__ = self.original
        self.records.clear()


MODES = ("plain", "traced", "debug", "naive")


def _quiet_debug_loop(workload: Workload) -> Workload:
    """Debug mode without its slow-callback warnings.

    Under valgrind every callback is "slow"; logging those would add a
    timing-dependent cost that is not what debug mode costs in production.
    The creation tracebacks and coroutine origin tracking, its real cost,
    stay on.
    """

    async def run(n: int) -> float:
        asyncio.get_running_loop().slow_callback_duration = 1e9
        return await workload(n)

    return run


#: Which stack recorder a traced run uses: whatever scopetrace picked, or the
#: pure-Python fallback even where the C accelerator is built.
CAPTURES = ("default", "python")


class Mode:
    """Switch one mode on and off around ``run``.

    ``settings`` are ``scopetrace.install()`` keywords (traced mode only).
    """

    def __init__(
        self, name: str, settings: dict[str, Any] | None = None, capture: str = "default"
    ) -> None:
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; accepted: {', '.join(MODES)}")
        if capture not in CAPTURES:
            raise ValueError(f"unknown capture {capture!r}; accepted: {', '.join(CAPTURES)}")
        self.name = name
        self.settings = settings or {}
        self.capture = capture
        self._naive: NaiveTracer | None = None
        self._saved_capture: Any = None

    def __enter__(self) -> Mode:
        if self.name == "traced":
            import scopetrace
            from scopetrace import _record as _capture

            if self.capture == "python":
                # The runtime takes _capture.capture when install() builds it;
                # swapping it first is how the benchmark prices the fallback
                # without a second build.
                self._saved_capture = _capture.capture
                _capture.capture = _capture._py_capture
            scopetrace.install(**self.settings)
        elif self.name == "naive":
            self._naive = NaiveTracer()
            self._naive.install()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.name == "traced":
            import scopetrace
            from scopetrace import _record as _capture

            scopetrace.uninstall()
            if self._saved_capture is not None:
                _capture.capture = self._saved_capture
                self._saved_capture = None
        elif self._naive is not None:
            self._naive.uninstall()
            self._naive = None

    def run(self, workload: Workload, n: int) -> float:
        if self.name == "debug":
            return float(
                anyio.run(_quiet_debug_loop(workload), n, backend_options={"debug": True})
            )
        return float(anyio.run(workload, n))
