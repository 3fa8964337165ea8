"""Sentry end to end: the real sentry-sdk, as a service configures it, sends to
a real envelope endpoint on 127.0.0.1 (:mod:`tests.sentry_receiver`).

A Starlette app served by uvicorn on 127.0.0.1 breaks a cancel scope the way
seed 003 did: four concurrent tool calls share a ref-counted connection from
an installed library (``toolpool`` 1.2.3, laid out here as a real
distribution), the first call opens its scope and the last one closes it.

* a request that fails with anyio's ``RuntimeError``: one event, Sentry's own
  (the request's, captured by the Starlette integration), with scopetrace's
  note in the exception value, the tags and the context;
* a violation the application swallowed (a task never awaited, an async
  generator closed by the loop's finalizer, ``gather(return_exceptions=True)``):
  one event, from the ``scopetrace`` log record, with asyncio's "Task
  exception was never retrieved" record of the same exception dropped;
* no ``sentry_sdk`` imported or initialised: scopetrace never imports it.

Determinism: a test waits for the request to have ended (Sentry's capture
included), then ``scopetrace.flush()`` writes the log record, then
``sentry_sdk.flush()`` empties the SDK's transport, then it reads what the
receiver got.  No sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import scopetrace
from scopetrace import _packages, semconv
from scopetrace._sinks import _sentry

from .conftest import listen
from .scenarios import qualname
from .sentry_receiver import SentryReceiver

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
NEEDED = ("sentry_sdk", "starlette", "uvicorn", "httpx")


def _require() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        message = f"missing {', '.join(missing)}: pip install -e '.[test]'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


_require()

import anyio  # noqa: E402
import httpx  # noqa: E402
import sentry_sdk  # noqa: E402
import uvicorn  # noqa: E402
from sentry_sdk.integrations import logging as sentry_logging  # noqa: E402
from sentry_sdk.integrations.logging import LoggingIntegration  # noqa: E402
from sentry_sdk.integrations.starlette import StarletteIntegration  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

#: The library whose connection is shared wrongly (seed 003's shape).
POOL_DIST, POOL_VERSION = "toolpool", "1.2.3"
POOL_SOURCE = '''
import anyio


class Pool:
    """One connection for concurrent calls: the first to enter opens its
    scope, the last to leave closes it (in whichever task that is)."""

    def __init__(self):
        self.users = 0
        self.scope = None

    async def __aenter__(self):
        if self.users == 0:
            self.scope = anyio.CancelScope()
            self.scope.__enter__()
        self.users += 1
        return self

    async def __aexit__(self, *exc_info):
        self.users -= 1
        if self.users == 0:
            self.scope.__exit__(None, None, None)
'''
#: A tag each handler sets on its own request's scope.
ROUTE_TAG = "test.route"
NOTE = "scopetrace: wrong_task"


# -- the application ------------------------------------------------------------


def install_pool(root: Path) -> Any:
    """``root/site-packages/toolpool/`` and its ``.dist-info``, as pip leaves them."""
    site = root / "site-packages"
    package = site / "toolpool"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pool.py").write_text(POOL_SOURCE)
    info = site / f"{POOL_DIST}-{POOL_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {POOL_DIST}\nVersion: {POOL_VERSION}\n"
    )
    (info / "RECORD").write_text("toolpool/__init__.py,,\ntoolpool/pool.py,,\n")
    (info / "top_level.txt").write_text("toolpool\n")
    sys.path.insert(0, str(site))
    _packages.forget()
    spec = importlib.util.spec_from_file_location("_toolpool_pool", package / "pool.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_app(pool: Any) -> Starlette:
    async def tool_calls(return_exceptions: bool = False, n: int = 4) -> list[Any]:
        """Staggered: call 0 opens the connection and leaves first, call 3 closes it."""
        connection = pool.Pool()

        async def call(i: int) -> str:
            async with connection:
                # asyncio (and uvloop) run expired timers in deadline order, so the
                # stagger fixes the order under any load (trio's would not: see scenarios)
                await asyncio.sleep(0.005 * (i + 1))
            return f"tool-{i}"

        tasks = [asyncio.create_task(call(i), name=f"tool-call-{i}") for i in range(n)]
        return await asyncio.gather(*tasks, return_exceptions=return_exceptions)

    async def tool_calls_in_task_group() -> None:
        connection = pool.Pool()

        async def call(i: int) -> None:
            async with connection:
                # asyncio (and uvloop) run expired timers in deadline order, so the
                # stagger fixes the order under any load (trio's would not: see scenarios)
                await anyio.sleep(0.005 * (i + 1))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(call, i, name=f"tool-call-{i}")

    async def never_awaited() -> None:
        """A scope entered by one task is exited by a task nobody awaits."""
        scope = anyio.CancelScope()

        async def opener() -> None:
            scope.__enter__()

        async def closer() -> None:
            scope.__exit__(None, None, None)

        await asyncio.create_task(opener(), name="opener")
        task = asyncio.create_task(closer(), name="closer")
        done, _ = await asyncio.wait({task})  # waits without retrieving the exception
        del task, done
        gc.collect()  # Task.__del__: "Task exception was never retrieved"

    async def abandoned_generator() -> None:
        """A task group spanning a yield; the consumer stops early, and the
        loop's finalizer closes the generator in a task of its own."""

        async def rows() -> Any:
            async with anyio.create_task_group():
                yield 1
                yield 2

        async for _ in rows():
            break

    def route(path: str, work: Any, status: int = 200) -> Route:
        async def endpoint(request: Request) -> JSONResponse:
            sentry_sdk.set_tag(ROUTE_TAG, path)
            result = await work()
            return JSONResponse({"result": repr(result)}, status_code=status)

        return Route(path, endpoint)

    return Starlette(routes=[
        route("/ask", tool_calls),
        route("/tg", tool_calls_in_task_group),
        route("/ok", lambda: tool_calls(n=1)),
        route("/rex", lambda: tool_calls(return_exceptions=True)),
        route("/unretrieved", never_awaited),
        route("/finalizer", abandoned_generator),
    ])


class Service:
    """The app on uvicorn, 127.0.0.1; :meth:`get` returns once the request
    has ended, Sentry's capture of its exception included."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._cond = threading.Condition()
        self._ended = 0
        config = uvicorn.Config(
            self, host="127.0.0.1", port=0, loop="asyncio", http="h11", lifespan="off",
            log_config=None, access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            with self._cond:
                self._ended += 1
                self._cond.notify_all()

    def start(self) -> Service:
        started = threading.Event()
        original = self.server.startup

        async def startup(*args: Any, **kwargs: Any) -> None:
            await original(*args, **kwargs)
            started.set()

        self.server.startup = startup  # type: ignore[method-assign]
        self.thread.start()
        assert started.wait(10), "uvicorn did not start"
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str) -> int:
        with self._cond:
            target = self._ended + 1
        status = httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10).status_code
        with self._cond:
            assert self._cond.wait_for(lambda: self._ended >= target, 10), f"{path} did not end"
        return status


class AsyncioRecords(logging.Handler):
    """What asyncio's default exception handler logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for_unretrieved(self, timeout: float = 10) -> logging.LogRecord:
        def found() -> logging.LogRecord | None:
            return next((r for r in self.records
                         if r.getMessage().startswith("Task exception was never retrieved")), None)

        with self._cond:
            assert self._cond.wait_for(lambda: found() is not None, timeout), self.records
            record = found()
        assert record is not None
        return record


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[SentryReceiver]:
    with SentryReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def sentry(receiver: SentryReceiver) -> Iterator[None]:
    """sentry-sdk initialised as a service does; inactive again afterwards."""
    sentry_sdk.init(
        dsn=receiver.dsn,
        integrations=[
            StarletteIntegration(),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        environment="test",
        release="scopetrace-tests@1",
    )
    try:
        yield
    finally:
        client = sentry_sdk.get_client()
        client.flush(timeout=5)
        client.close(timeout=5)
        sentry_sdk.Scope.get_global_scope().set_client(None)
        assert not _sentry.active()


@pytest.fixture(scope="module")
def service(sentry: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("toolpool")
    pool = install_pool(root)
    svc = Service(build_app(pool)).start()
    try:
        yield svc
    finally:
        svc.stop()
        sys.path.remove(str(root / "site-packages"))
        _packages.forget()


@pytest.fixture
def events(service: Service, receiver: SentryReceiver) -> Any:
    """``events()``: every Sentry event sent since the test started, once the
    reports are delivered and the SDK's transport is empty."""
    sentry_sdk.flush(timeout=5)
    receiver.clear()

    def read() -> list[dict[str, Any]]:
        assert scopetrace.flush(5)
        sentry_sdk.flush(timeout=5)
        assert receiver.errors() == []
        return receiver.events()

    return read


@pytest.fixture
def asyncio_records() -> Iterator[AsyncioRecords]:
    handler = AsyncioRecords()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# -- what an event carries ------------------------------------------------------------


def exception_of(event: dict[str, Any]) -> dict[str, Any]:
    """anyio's RuntimeError among the event's exception values."""
    values = [v for v in event["exception"]["values"] if v["type"] == "RuntimeError"]
    assert len(values) == 1, event["exception"]["values"]
    return values[0]


def check_diagnosis(event: dict[str, Any], report: scopetrace.Report) -> None:
    """The note in the exception value; the tags; the context block."""
    value = exception_of(event)["value"]
    assert value.startswith("Attempted to exit cancel scope in a different task")
    assert report.note() in value
    tags = event["tags"]
    assert report.culprit is not None
    assert tags[semconv.SENTRY_TAG_KIND] == report.kind
    assert tags[semconv.SENTRY_TAG_CAUSE] == report.cause
    assert tags[semconv.SENTRY_TAG_BACKEND] == "asyncio"
    assert tags[semconv.SENTRY_TAG_CULPRIT_SITE] == report.culprit.site
    assert tags[semconv.SENTRY_TAG_OPENER_TASK] == report.opener.name
    assert report.closer is not None
    assert tags[semconv.SENTRY_TAG_CLOSER_TASK] == report.closer.name
    assert tags[semconv.SENTRY_TAG_INCIDENT] == report.incident_id
    assert set(tags) >= set(semconv.SENTRY_TAGS) - {
        semconv.SENTRY_TAG_CULPRIT_PACKAGE, semconv.SENTRY_TAG_CULPRIT_VERSION
    }
    assert all(len(k) <= 32 and len(v) <= 200 and "\n" not in v for k, v in tags.items())
    context = event["contexts"][semconv.SENTRY_CONTEXT]
    attributes = report.attributes()
    assert set(context) == set(attributes)
    for key, expected in attributes.items():
        if isinstance(expected, tuple):
            expected = list(expected)
        if isinstance(expected, str) and len(expected) > 1000:  # older SDKs trim long strings
            assert context[key][:900] == expected[:900], key
        else:
            assert context[key] == expected, key
    assert event["fingerprint"][0] == _sentry.FINGERPRINT
    text = event["extra"][_sentry.EXTRA_REPORT]  # sentry-sdk < 2.34 cuts it at 1024 characters
    assert text.startswith(f"scopetrace: {report.headline()} [incident {report.incident_id}]")
    # The log record's ten-key copy of the attributes is not left behind.
    assert "scopetrace" not in event["extra"]


def check_culprit_package(event: dict[str, Any]) -> None:
    tags, context = event["tags"], event["contexts"][semconv.SENTRY_CONTEXT]
    assert tags[semconv.SENTRY_TAG_CULPRIT_PACKAGE] == POOL_DIST
    assert tags[semconv.SENTRY_TAG_CULPRIT_VERSION] == POOL_VERSION
    assert tags[semconv.SENTRY_TAG_CULPRIT_SITE].endswith(f"in {qualname('Pool.__aenter__')}")
    assert "toolpool/pool.py:" in tags[semconv.SENTRY_TAG_CULPRIT_SITE]
    assert context[semconv.CULPRIT_PACKAGE] == POOL_DIST
    assert context[semconv.CULPRIT_PACKAGE_VERSION] == POOL_VERSION


def message_of(event: dict[str, Any]) -> str:
    """A log record's message (early 2.x releases send only the template and its arguments)."""
    entry = event["logentry"]
    if "formatted" in entry:
        return str(entry["formatted"])
    return str(entry["message"]) % tuple(entry.get("params") or ())


def only_violation(reports: list[scopetrace.Report]) -> scopetrace.Report:
    assert len(reports) == 1, reports
    return reports[0]


# -- a request that fails ---------------------------------------------------------------


def test_failed_request_gives_one_event_with_the_diagnosis(
    service: Service, events: Any
) -> None:
    scopetrace.install()
    reports = listen()
    assert service.get("/ask") == 500
    got = events()
    assert len(got) == 1, [e.get("logger") for e in got]
    (event,) = got
    report = only_violation(list(reports))
    assert (report.kind, report.cause) == ("wrong_task", "sibling_task")
    assert (report.opener.name, report.closer and report.closer.name) == ("tool-call-0", "tool-call-3")
    # The request's own event: captured by the Starlette integration, with
    # the request and its route.
    assert exception_of(event)["mechanism"]["handled"] is False
    assert event.get("logger") is None
    assert event["transaction"] == "/ask"
    assert event["request"]["url"].endswith("/ask")
    assert event["tags"][ROUTE_TAG] == "/ask"
    check_diagnosis(event, report)
    check_culprit_package(event)


def test_failed_request_in_a_task_group_gives_one_event(service: Service, events: Any) -> None:
    """anyio's task group wraps the RuntimeErrors (one per scope the wrong
    task exits) in an ExceptionGroup: still one event, told by the group."""
    scopetrace.install()
    reports = listen()
    assert service.get("/tg") == 500
    (event,) = events()
    values = event["exception"]["values"]
    assert any(v["type"] in ("ExceptionGroup", "BaseExceptionGroup") for v in values)
    errors = [v for v in values if v["type"] == "RuntimeError"]
    if sys.version_info >= (3, 11):  # sentry-sdk does not unpack the exceptiongroup backport
        assert errors
    assert all("scopetrace: " in v["value"] for v in errors)
    tags, context = event["tags"], event["contexts"][semconv.SENTRY_CONTEXT]
    told = (tags[semconv.SENTRY_TAG_INCIDENT], tags[semconv.SENTRY_TAG_KIND],
            tags[semconv.SENTRY_TAG_CAUSE])
    assert told in {(r.incident_id, r.kind, r.cause) for r in reports}
    assert tags[semconv.SENTRY_TAG_CULPRIT_PACKAGE] == POOL_DIST
    assert context[semconv.VIOLATION_CAUSE] == tags[semconv.SENTRY_TAG_CAUSE]


def test_no_violation_no_event(service: Service, events: Any) -> None:
    scopetrace.install()
    assert service.get("/ok") == 200
    assert events() == []


# -- violations the application swallowed --------------------------------------------------


@pytest.mark.parametrize(("path", "cause"), [
    ("/unretrieved", "opener_finished"),
    ("/finalizer", "asyncgen_finalizer"),
])
def test_unretrieved_task_exception_gives_one_event_from_the_scopetrace_record(
    service: Service, events: Any, asyncio_records: AsyncioRecords, path: str, cause: str
) -> None:
    scopetrace.install()
    reports = listen()
    assert service.get(path) == 200
    asyncio_record = asyncio_records.wait_for_unretrieved()
    got = events()
    assert len(got) == 1, [e.get("logger") for e in got]
    (event,) = got
    report = only_violation(list(reports))
    assert report.cause == cause
    # asyncio logged the same exception at ERROR (an event of its own, for
    # Sentry's logging integration, had it not been dropped) ...
    assert asyncio_record.exc_info is not None
    assert getattr(asyncio_record.exc_info[1], _sentry.ATTRIBUTE).captured
    # ... but the event is scopetrace's record: its message is the diagnosis.
    assert event["logger"] == semconv.LOGGER_NAME
    assert event["level"] == "error"
    assert message_of(event).startswith(report.summary())
    check_diagnosis(event, report)


def test_gathered_exception_gives_one_event_from_the_scopetrace_record(
    service: Service, events: Any
) -> None:
    scopetrace.install()
    reports = listen()
    assert service.get("/rex") == 200  # gather(return_exceptions=True) swallowed it
    (event,) = events()
    report = only_violation(list(reports))
    assert event["logger"] == semconv.LOGGER_NAME
    assert message_of(event).startswith(report.summary())
    check_diagnosis(event, report)
    check_culprit_package(event)
    # The exception's own traceback: down to anyio's check, through the pool.
    frames = exception_of(event)["stacktrace"]["frames"]
    assert any(f["function"] in ("Pool.__aexit__", "__aexit__") and "toolpool" in f["abs_path"]
               for f in frames)
    # Never another request's scope (the delivery thread was started inside one).
    assert event.get("tags", {}).get(ROUTE_TAG) in (None, "/rex")


def test_swallowed_violation_event_belongs_to_its_request(service: Service, events: Any) -> None:
    scopetrace.install()
    assert service.get("/rex") == 200
    (event,) = events()
    assert event["transaction"] == "/rex"
    assert event["request"]["url"].endswith("/rex")
    assert event["tags"][ROUTE_TAG] == "/rex"


def test_asyncio_record_is_kept_when_the_scopetrace_record_cannot_reach_sentry(
    service: Service, events: Any, asyncio_records: AsyncioRecords
) -> None:
    """With the scopetrace logger ignored by Sentry, asyncio's record is the
    one event, and it gets the diagnosis."""
    scopetrace.install()
    reports = listen()
    sentry_logging.ignore_logger(semconv.LOGGER_NAME)
    try:
        assert service.get("/unretrieved") == 200
        asyncio_records.wait_for_unretrieved()
        (event,) = events()
    finally:
        sentry_logging._IGNORED_LOGGERS.discard(semconv.LOGGER_NAME)
    assert event["logger"] == "asyncio"
    check_diagnosis(event, only_violation(list(reports)))


def test_rate_limited_swallowed_violation_is_only_counted(service: Service, events: Any) -> None:
    """The documented limit: a swallowed violation held back by the rate limit
    has no event of its own; the held-back count has one."""
    scopetrace.install(rate_limit=0.01)  # one report per key, then held back
    assert service.get("/rex") == 200
    assert service.get("/rex") == 200
    got = events()
    with_exception = [e for e in got if e.get("exception")]
    messages = [message_of(e) for e in got if not e.get("exception")]
    assert len(with_exception) == 1
    assert with_exception[0]["tags"][semconv.SENTRY_TAG_KIND] == "wrong_task"
    assert len(messages) == 1
    assert messages[0].startswith("1 more report(s) like this were held back by the rate limit")


def test_rate_limited_failed_request_still_gets_the_diagnosis(
    service: Service, events: Any
) -> None:
    """A request's own event is enriched whether or not its report was let through."""
    scopetrace.install(rate_limit=0.01)
    assert service.get("/ask") == 500
    assert service.get("/ask") == 500
    requests = [e for e in events() if e.get("request")]
    assert len(requests) == 2
    for event in requests:
        assert event["tags"][semconv.SENTRY_TAG_CAUSE] == "sibling_task"
        assert event["tags"][semconv.SENTRY_TAG_CULPRIT_PACKAGE] == POOL_DIST
        assert NOTE in exception_of(event)["value"]
    assert requests[0]["tags"][semconv.SENTRY_TAG_INCIDENT] != requests[1]["tags"][
        semconv.SENTRY_TAG_INCIDENT]


# -- the processor on its own -----------------------------------------------------------


def test_processor_never_raises_and_never_drops_a_foreign_event() -> None:
    plain = {"exception": {"values": [{"type": "ValueError", "value": "x"}]}}
    assert _sentry._process(plain, {"exc_info": (ValueError, ValueError("x"), None)}) is plain
    assert _sentry._process({}, {}) == {}
    assert _sentry._process({}, None) == {}  # type: ignore[arg-type]

    class Odd(Exception):
        exceptions = ("not", "exceptions")

    assert _sentry._process({}, {"exc_info": (Odd, Odd(), None)}) == {}
    # A report whose event has odd shapes: enriched as far as possible, kept.
    exc = RuntimeError("Attempted to exit cancel scope in a different task")
    report = _fake_report()
    told = _sentry.attach(exc, report, logging.ERROR)
    assert told is not None
    odd = {"tags": ["not", "a", "dict"], "contexts": None, "exception": "odd"}
    assert _sentry._process(odd, {"exc_info": (RuntimeError, exc, None)}) is odd
    assert odd["tags"][semconv.SENTRY_TAG_KIND] == "wrong_task"
    assert _sentry._process({}, {"exc_info": (RuntimeError, exc, None)}) is None  # the second


def _fake_report() -> scopetrace.Report:
    side = scopetrace.TaskInfo("t", 1, "coro", "app.py:1 in f", "  File ...", False)
    return scopetrace.Report(
        signal=semconv.VIOLATION_SPAN, backend="asyncio", opener=side, closer=side,
        kind="wrong_task", cause="sibling_task", message="Attempted to exit", entered_at_ns=0,
        reported_at_ns=0, thread_id=1, thread_name="MainThread", incident_id="0" * 16,
    )


# -- without Sentry ------------------------------------------------------------------------

NO_SENTRY = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    import scopetrace
    from scopetrace._sinks import _sentry
    from tests.scenarios import RefCounted

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logging.getLogger("scopetrace").addHandler(Keep())
    scopetrace.install(exporter="none")

    async def fan_out():
        conn = RefCounted()

        async def call(i):
            async with conn:
                # asyncio (and uvloop) run expired timers in deadline order, so the
                # stagger fixes the order under any load (trio's would not: see scenarios)
                await asyncio.sleep(0.005 * (i + 1))

        return await asyncio.gather(*(call(i) for i in range(4)), return_exceptions=True)

    def violation():
        caught = [r for r in asyncio.run(fan_out()) if isinstance(r, RuntimeError)]
        assert scopetrace.flush(5)
        errors = [r for r in records if r.levelno >= logging.ERROR]
        records.clear()
        return {
            "caught": len(caught),
            "carries_report": hasattr(caught[0], _sentry.ATTRIBUTE),
            "records": len(errors),
            "record_exc_info": [r.exc_info is not None for r in errors],
            "sentry_imported": "sentry_sdk" in sys.modules,
            "processor": _sentry._installed,
        }

    out = {"not_imported": violation()}
    import sentry_sdk  # imported, never initialised
    out["imported"] = violation()
    out["imported"]["active"] = sentry_sdk.get_client().is_active()
    print(json.dumps(out))
    """
)


def test_without_sentry_scopetrace_never_imports_it() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", NO_SENTRY], capture_output=True, text=True, timeout=60,
        cwd=root, env=env,
    )
    assert done.returncode == 0, done.stderr
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    for phase in ("not_imported", "imported"):
        result = out[phase]
        assert result["caught"] == 1
        assert result["carries_report"] is True
        assert result["records"] == 1
        assert result["record_exc_info"] == [False], phase  # no traceback in plain logs
        assert result["processor"] is False
    assert out["not_imported"]["sentry_imported"] is False
    assert out["imported"]["sentry_imported"] is True
    assert out["imported"]["active"] is False
