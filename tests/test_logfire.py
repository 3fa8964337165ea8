"""Logfire end to end: the real ``logfire`` SDK, its ASGI instrumentation, a
Starlette app on uvicorn (127.0.0.1), and its spans in an in-memory exporter.

Each run is a fresh interpreter (:data:`CHILD`): ``logfire.configure()``
sets the global OpenTelemetry providers and ``import logfire`` switches on
scopetrace's Logfire attributes (:func:`scopetrace._sinks._otel._logfire_attributes`),
neither of which another test should inherit.

The app breaks a cancel scope as seed 003 did, through a ref-counted
connection of an installed library (``toolpool`` 1.2.3, laid out as a real
distribution), twice: from ``toolpool/pool.py``, and from
``toolpool/session.py``, a path like ``mcp/shared/session.py`` that Logfire's
scrubber redacts wherever a value contains "session".
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scopetrace import semconv

from .scenarios import qualname

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
NEEDED = ("logfire", "opentelemetry.instrumentation.asgi", "starlette", "uvicorn", "httpx")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _dependencies() -> None:
    missing = [m for m in NEEDED if _missing(m)]
    if missing:
        message = f"missing {', '.join(missing)}: pip install -e '.[test]'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


#: The child: configures logfire, serves the app, prints the spans as JSON.
CHILD = textwrap.dedent(
    '''
    import asyncio, json, sys, tempfile, threading
    from pathlib import Path

    import logfire
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    POOL = """
    import anyio


    class {name}:
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
    """

    site = Path(tempfile.mkdtemp()) / "site-packages"
    (site / "toolpool").mkdir(parents=True)
    (site / "toolpool" / "__init__.py").write_text("")
    (site / "toolpool" / "pool.py").write_text(POOL.format(name="Pool"))
    (site / "toolpool" / "session.py").write_text(POOL.format(name="Session"))
    info = site / "toolpool-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\\nName: toolpool\\nVersion: 1.2.3\\n")
    (info / "RECORD").write_text(
        "toolpool/__init__.py,,\\ntoolpool/pool.py,,\\ntoolpool/session.py,,\\n")
    sys.path.insert(0, str(site))
    from toolpool.pool import Pool
    from toolpool.session import Session

    exporter = InMemorySpanExporter()
    options = dict(
        send_to_logfire=False, console=False, service_name="scopetrace-test",
        additional_span_processors=[SimpleSpanProcessor(exporter)],
    )
    if "--keep-scopetrace" in sys.argv:
        # docs/sentry-and-logfire.md: keep scopetrace's attributes unscrubbed.
        def keep_scopetrace(match):
            if str(match.path[-1]).startswith("anyio.cancel_scope."):
                return match.value
            return None

        options["scrubbing"] = logfire.ScrubbingOptions(callback=keep_scopetrace)
    logfire.configure(**options)

    import scopetrace

    scopetrace.install()

    import anyio, httpx, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def endpoint(connection_type):
        async def tool_calls(request):
            connection = connection_type()

            async def call(i):
                async with connection:
                    # asyncio (and uvloop) run expired timers in deadline order, so the
                    # stagger fixes the order under any load (trio's would not: see scenarios)
                    await asyncio.sleep(0.005 * (i + 1))

            tasks = [asyncio.create_task(call(i), name=f"tool-call-{i}") for i in range(4)]
            await asyncio.gather(*tasks)
            return JSONResponse({})

        return tool_calls

    app = Starlette(routes=[Route("/ask", endpoint(Pool)), Route("/session", endpoint(Session))])
    instrumented = logfire.instrument_asgi(app)
    ended = threading.Condition()
    count = [0]

    async def service(scope, receive, send):
        try:
            await instrumented(scope, receive, send)
        finally:
            with ended:
                count[0] += 1
                ended.notify_all()

    server = uvicorn.Server(uvicorn.Config(
        service, host="127.0.0.1", port=0, loop="asyncio", http="h11", lifespan="off",
        log_config=None, access_log=False,
    ))
    started = threading.Event()
    startup = server.startup

    async def signalled_startup(*args, **kwargs):
        await startup(*args, **kwargs)
        started.set()

    server.startup = signalled_startup
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert started.wait(10)
    port = server.servers[0].sockets[0].getsockname()[1]

    def span_json(span):
        return {
            "name": span.name,
            "scope": span.instrumentation_scope.name,
            "span_id": span.context.span_id,
            "trace_id": span.context.trace_id,
            "parent": span.parent.span_id if span.parent else None,
            "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {}),
            "events": [e.name for e in span.events],
        }

    out = {"logfire": logfire.VERSION}
    for path in ("/ask", "/session"):
        exporter.clear()
        with ended:
            target = count[0] + 1
        status = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code
        with ended:
            assert ended.wait_for(lambda: count[0] >= target, 10)
        assert scopetrace.flush(5)
        logfire.force_flush()
        out[path] = {"status": status, "spans": [span_json(s) for s in exporter.get_finished_spans()]}
    server.should_exit = True
    thread.join(10)
    print(json.dumps(out, default=list))
    '''
)


def run_child(*args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("SCOPETRACE", None)
    for key in [k for k in env if k.startswith(("OTEL_", "LOGFIRE_"))]:
        env.pop(key)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def spans() -> dict[str, Any]:
    return run_child()


def violation_and_request(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    spans = run["spans"]
    (violation,) = [s for s in spans if s["name"] == semconv.VIOLATION_SPAN]
    requests = [s for s in spans if s["parent"] is None]
    assert len(requests) == 1, [(s["name"], s["scope"]) for s in requests]
    return violation, requests[0], spans


def test_violation_span_is_a_child_of_the_request_span(spans: dict[str, Any]) -> None:
    run = spans["/ask"]
    assert run["status"] == 500
    violation, request, _ = violation_and_request(run)
    assert request["scope"] == "opentelemetry.instrumentation.asgi"
    assert request["name"].startswith("GET")
    assert violation["scope"] == "scopetrace"
    assert violation["trace_id"] == request["trace_id"]
    assert violation["parent"] == request["span_id"]
    attrs = violation["attributes"]
    assert attrs[semconv.VIOLATION_KIND] == "wrong_task"
    assert attrs[semconv.VIOLATION_CAUSE] == "sibling_task"
    assert attrs[semconv.OPENER_TASK_NAME] == "tool-call-0"
    assert attrs[semconv.CLOSER_TASK_NAME] == "tool-call-3"
    assert attrs[semconv.CULPRIT_SITE].endswith(f"toolpool/pool.py:13 in {qualname('Pool.__aenter__')}")
    assert attrs[semconv.CULPRIT_PACKAGE] == "toolpool"
    assert attrs[semconv.CULPRIT_PACKAGE_VERSION] == "1.2.3"
    assert violation["status"] == "ERROR"
    assert violation["events"] == ["exception"]
    assert "logfire.scrubbed" not in attrs


def test_violation_span_reads_well_in_logfire(spans: dict[str, Any]) -> None:
    violation, _, _ = violation_and_request(spans["/ask"])
    attrs = violation["attributes"]
    message = attrs[semconv.LOGFIRE_MSG]
    assert message.startswith("anyio cancel scope violation: wrong_task (sibling_task): fix ")
    assert attrs[semconv.CULPRIT_SITE] in message
    assert "(toolpool 1.2.3)" in message
    assert "entered in task 'tool-call-0'" in message
    assert "exited in task 'tool-call-3'" in message
    assert attrs[semconv.LOGFIRE_LEVEL_NUM] == 17  # error
    assert attrs[semconv.LOGFIRE_MSG_TEMPLATE] == (
        "anyio cancel scope violation: {anyio.cancel_scope.violation.kind} "
        "({anyio.cancel_scope.violation.cause}): fix {anyio.cancel_scope.culprit.site}"
    )
    assert "scopetrace" in attrs[semconv.LOGFIRE_TAGS]
    # The culprit's location under the keys Logfire links to the source.
    assert attrs[semconv.LOGFIRE_CODE_FILEPATH].endswith("toolpool/pool.py")
    assert attrs[semconv.LOGFIRE_CODE_LINENO] == 13
    assert attrs[semconv.LOGFIRE_CODE_FUNCTION] == qualname("Pool.__aenter__")


def test_orphan_warning_reads_as_a_warning(spans: dict[str, Any]) -> None:
    _, request, all_spans = violation_and_request(spans["/ask"])
    (orphan,) = [s for s in all_spans if s["name"] == semconv.ORPHANED_SPAN]
    attrs = orphan["attributes"]
    assert attrs[semconv.LOGFIRE_LEVEL_NUM] == 13  # warn
    assert attrs[semconv.LOGFIRE_MSG].startswith("anyio cancel scope orphaned (early warning): fix ")
    assert orphan["trace_id"] == request["trace_id"]


def test_scrubbed_paths_still_name_the_culprit(spans: dict[str, Any]) -> None:
    """Logfire redacts every attribute value containing "session" (a culprit
    in mcp/shared/session.py): the message and the code.* keys, which it never
    scrubs, still say where the bug is."""
    run = spans["/session"]
    assert run["status"] == 500
    violation, request, _ = violation_and_request(run)
    assert violation["parent"] == request["span_id"]
    attrs = violation["attributes"]
    scrubbed = {entry["path"][-1] for entry in json.loads(attrs["logfire.scrubbed"])}
    assert semconv.CULPRIT_SITE in scrubbed  # what the research found
    assert attrs[semconv.CULPRIT_SITE].startswith("[Scrubbed due to ")
    message = attrs[semconv.LOGFIRE_MSG]
    assert f"toolpool/session.py:13 in {qualname('Session.__aenter__')} (toolpool 1.2.3)" in message
    assert attrs[semconv.LOGFIRE_CODE_FILEPATH].endswith("toolpool/session.py")
    assert attrs[semconv.LOGFIRE_CODE_LINENO] == 13
    assert attrs[semconv.LOGFIRE_CODE_FUNCTION] == qualname("Session.__aenter__")
    # Values without "session" are left alone.
    assert attrs[semconv.VIOLATION_KIND] == "wrong_task"
    assert attrs[semconv.OPENER_TASK_NAME] == "tool-call-0"
    assert attrs[semconv.CULPRIT_PACKAGE] == "toolpool"


def test_documented_scrubbing_callback_keeps_every_attribute() -> None:
    run = run_child("--keep-scopetrace")["/session"]
    violation, _, _ = violation_and_request(run)
    attrs = violation["attributes"]
    assert attrs[semconv.CULPRIT_SITE].endswith(f"toolpool/session.py:13 in {qualname('Session.__aenter__')}")
    assert attrs[semconv.OPENER_SITE].endswith(f"in {qualname('Session.__aenter__')}")
    assert attrs[semconv.CLOSER_SITE].endswith(f"in {qualname('Session.__aexit__')}")
    assert not any(
        str(entry["path"][-1]).startswith("anyio.cancel_scope.")
        for entry in json.loads(attrs.get("logfire.scrubbed", "[]"))
    )
