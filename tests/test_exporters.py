"""The embedded exporters (console, jsonl, otlp, none), chosen at report time.

The OTLP tests export through the real OTel SDK and OTLP/HTTP exporter to a
real receiver on 127.0.0.1 (tests/otlp_receiver.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import metrics, trace

import scopetrace
from scopetrace import _cli, semconv
from scopetrace._sinks import _jsonl
from scopetrace._config import ConfigWarning
from scopetrace._sinks._otel import metrics_configured, tracing_configured
from scopetrace._install import current_runtime

from . import programs, scenarios
from .conftest import Reports, Telemetry, _reset_global_providers
from .otlp_receiver import OtlpReceiver

ASYNCIO: tuple[str, dict[str, object]] = ("asyncio", {})


@pytest.fixture
def no_providers() -> Iterator[None]:
    """The application has configured no OpenTelemetry provider."""
    _reset_global_providers()
    yield
    scopetrace.uninstall()
    _reset_global_providers()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> OtlpReceiver:
    """The standard OTEL_* variables pointing at the receiver."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=payments")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    return receiver


def violate() -> None:
    """One wrong_task/sibling_task violation (seed 003's shared connection)."""
    caught, outcome = scenarios.run(scenarios.sibling_gather, ASYNCIO)
    assert outcome is None and len(caught) == 1


# -- console and none ----------------------------------------------------------


def test_console_is_the_default_and_writes_the_report_on_stderr(
    no_providers: None, capfd: pytest.CaptureFixture[str]
) -> None:
    scopetrace.install()
    violate()
    err = capfd.readouterr().err
    assert err.count("scopetrace: anyio cancel scope violation: wrong_task (sibling_task) [incident ") == 1
    assert "entered by: task" in err and "exited by:  task" in err
    assert "likely cause:" in err


def test_none_writes_nothing(no_providers: None, capfd: pytest.CaptureFixture[str]) -> None:
    scopetrace.install(exporter="none")
    seen = Reports(violations_only=True)
    runtime = current_runtime()
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)
    violate()
    assert len(seen) == 1  # it was reported...
    assert capfd.readouterr().err == ""  # ...and nothing embedded was written


def test_the_application_provider_wins_even_when_set_after_install(
    no_providers: None, capfd: pytest.CaptureFixture[str]
) -> None:
    scopetrace.install(exporter="console")
    # The application configures OpenTelemetry only now, after install().
    telemetry = Telemetry()
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    try:
        violate()
        assert len(telemetry.finished(semconv.VIOLATION_SPAN)) == 1
        assert capfd.readouterr().err == ""  # no embedded output next to the app's
    finally:
        scopetrace.uninstall()
        telemetry.tracer_provider.shutdown()
        telemetry.meter_provider.shutdown()


# -- jsonl and `scopetrace report` ----------------------------------------------


def test_jsonl_appends_one_object_per_violation(
    no_providers: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "violations.jsonl"
    scopetrace.install(exporter="jsonl", jsonl_path=str(path))
    violate()
    violate()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    attrs = rec[_jsonl.ATTRIBUTES]
    assert attrs[semconv.VIOLATION_KIND] == semconv.KIND_WRONG_TASK
    assert attrs[semconv.VIOLATION_CAUSE] == semconv.CAUSE_SIBLING_TASK
    assert attrs[semconv.OPENER_SITE].startswith(scenarios.__file__)
    assert "different task" in rec[_jsonl.MESSAGE]
    assert rec[_jsonl.PID] == os.getpid()
    assert rec[_jsonl.TIME].endswith("Z")
    assert rec[_jsonl.SUMMARY].startswith("anyio cancel scope violation: wrong_task")
    assert capfd.readouterr().err == ""  # the file replaces the console report


def test_jsonl_unwritable_warns_once_and_falls_back_to_stderr(
    no_providers: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    scopetrace.install(exporter="jsonl", jsonl_path=str(tmp_path))  # a directory
    violate()
    violate()
    err = capfd.readouterr().err
    assert err.count(f"scopetrace: cannot append to SCOPETRACE_JSONL_PATH={str(tmp_path)!r}") == 1
    assert err.count("scopetrace: anyio cancel scope violation:") == 2  # none lost


def _report(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "scopetrace", "report", *args],
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_report_summarises_by_kind_cause_and_site(no_providers: None, tmp_path: Path) -> None:
    path = tmp_path / "violations.jsonl"
    scopetrace.install(exporter="jsonl", jsonl_path=str(path))
    violate()
    violate()
    scenarios.run(scenarios.misnested, ASYNCIO)
    scopetrace.uninstall()
    with path.open("a") as f:
        f.write("not json\n")
    code, out, err = _report(str(path))
    assert code == 0, err
    assert out.startswith(f"scopetrace report: 3 violation(s) and 2 orphan warning(s) in {path}")
    assert "2 distinct" in out
    assert "by kind:  wrong_task 2, not_innermost 1" in out
    assert "by cause: sibling_task 2, misnested 1" in out
    # Most frequent site first, with where the scope was entered and exited.
    body = out.split("by site (most frequent first):\n", 1)[1]
    assert body.lstrip().startswith("2  wrong_task (sibling_task)")
    assert f"entered at {scenarios.__file__}" in body
    assert "likely causes:\n  sibling_task: another task sharing the resource" in out
    assert "1 line(s) skipped" in out


def test_report_counts_what_the_rate_limit_held_back(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    base = {semconv.VIOLATION_KIND: "wrong_task", semconv.VIOLATION_CAUSE: "sibling_task",
            semconv.OPENER_SITE: "a.py:1 in f", semconv.CLOSER_SITE: "a.py:2 in g"}
    lines = [
        {_jsonl.TIME: "2026-01-01T00:00:00.000000Z", _jsonl.ATTRIBUTES: base},
        {_jsonl.TIME: "2026-01-01T00:00:01.000000Z",
         _jsonl.ATTRIBUTES: {**base, semconv.SUPPRESSED: 40}},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, _ = _report(str(path))
    assert code == 0
    assert "42 violation(s)" in out and "1 distinct" in out


def test_report_of_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    code, out, err = _report(str(tmp_path / "nope.jsonl"))
    assert code == 2 and out == ""
    assert err.startswith(f"scopetrace report: cannot read {tmp_path / 'nope.jsonl'}")


def test_report_of_an_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert _cli.main(["report", str(path)]) == 0
    assert capsys.readouterr().out == f"scopetrace report: no violations in {path}\n"


# -- otlp --------------------------------------------------------------------------


def test_otlp_exports_span_and_metric_with_the_standard_variables(
    no_providers: None, otlp_env: OtlpReceiver
) -> None:
    scopetrace.install(exporter="otlp")
    violate()
    # Never set as the global providers: the application may still set its own.
    assert not tracing_configured() and not metrics_configured()
    scopetrace.uninstall()  # flushes the embedded SDK
    span = otlp_env.wait_for_span(semconv.VIOLATION_SPAN)
    assert span.attributes[semconv.VIOLATION_KIND] == semconv.KIND_WRONG_TASK
    assert span.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_SIBLING_TASK
    assert span.attributes[semconv.OPENER_TASK_NAME] != span.attributes[semconv.CLOSER_TASK_NAME]
    assert span.status_code == 2  # ERROR
    assert span.scope == "scopetrace"
    assert span.resource["service.name"] == "checkout"
    assert span.resource["deployment.environment"] == "test"
    assert span.resource["team"] == "payments"
    point = otlp_env.wait_for_point(semconv.VIOLATIONS_METRIC)
    assert point.value == 1
    assert point.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_SIBLING_TASK
    assert point.resource["service.name"] == "checkout"
    assert all(r.headers.get("x-tenant") == "acme" for r in otlp_env.requests)
    assert otlp_env.errors == []


def test_otlp_is_not_used_when_the_application_has_providers(
    traced: Telemetry, monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    scopetrace.uninstall()
    scopetrace.install(exporter="otlp")
    violate()
    runtime = current_runtime()
    assert runtime is not None
    assert runtime.reporter.signals._embedded is None  # never created
    scopetrace.uninstall()
    assert len(traced.finished(semconv.VIOLATION_SPAN)) == 1
    assert receiver.requests == []


def test_otlp_without_its_packages_warns_once_and_uses_the_console() -> None:
    # Blocking the import is how Python marks a module as not installed.
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["opentelemetry.exporter.otlp.proto.http"] = None
        warnings.simplefilter("always")
        import scopetrace
        from scopetrace._install import current_runtime
        scopetrace.install(exporter="otlp")
        print(current_runtime().options.exporter)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "console"
    assert proc.stderr.count("ConfigWarning") == 1
    assert "SCOPETRACE_EXPORTER='otlp' needs opentelemetry.exporter.otlp.proto.http" in proc.stderr
    assert "pip install 'scopetrace[otlp]'" in proc.stderr


# -- flush at exit -------------------------------------------------------------------

#: A violation while asyncio.run() shuts down, just before the process exits.
AT_SHUTDOWN = "import scopetrace; scopetrace.install()\n" + programs.AT_SHUTDOWN

#: Later still: in an atexit handler of the application (registered after
#: scopetrace's own, so it runs before scopetrace's flush).  With "warm", a first
#: violation during the run has already started the embedded SDK.
IN_ATEXIT = """
import asyncio, atexit, sys, anyio, scopetrace
scopetrace.install()

async def shared_scope():
    scope = anyio.CancelScope()
    async def opener():
        scope.__enter__()
    async def closer():
        try:
            scope.__exit__(None, None, None)
        except RuntimeError:
            pass
    await asyncio.gather(opener())
    await asyncio.gather(closer())

if sys.argv[1] == "warm":
    asyncio.run(shared_scope())
atexit.register(lambda: asyncio.run(shared_scope()))
"""


def _run_exporting(receiver: OtlpReceiver, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SCOPETRACE_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "teardown",
        # Far longer than the test: only the exit flush can deliver in time.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    proc = subprocess.run(
        [sys.executable, "-c", program, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_violation_while_asyncio_run_shuts_down_is_exported(receiver: OtlpReceiver) -> None:
    _run_exporting(receiver, AT_SHUTDOWN)
    span = receiver.wait_for_span(semconv.VIOLATION_SPAN, timeout=5)
    assert span.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_ASYNCGEN_FINALIZER
    assert span.resource["service.name"] == "teardown"
    assert receiver.wait_for_point(semconv.VIOLATIONS_METRIC, timeout=5).value == 1


def test_a_violation_in_an_atexit_handler_is_exported_by_the_running_sdk(
    receiver: OtlpReceiver,
) -> None:
    _run_exporting(receiver, IN_ATEXIT, "warm")
    receiver.wait_for(
        lambda: True if len(receiver.spans_named(semconv.VIOLATION_SPAN)) == 2 else None,
        timeout=5, what="both violation spans",
    )
    # Cumulative: the flusher may send 1 before the exit sends 2.
    def values() -> list[float] | None:
        seen = [p.value for p in receiver.points_of(semconv.VIOLATIONS_METRIC)]
        return seen if 2 in seen else None

    assert max(receiver.wait_for(values, timeout=5, what="the counter at 2")) == 2


def test_a_first_violation_in_an_atexit_handler_is_not_lost(receiver: OtlpReceiver) -> None:
    """The embedded SDK is built at the first report even in an atexit handler,
    where (Python 3.12+) no thread can start and concurrent.futures cannot be
    imported: it then exports each span as it is made."""
    proc = _run_exporting(receiver, IN_ATEXIT, "cold")
    assert "could not start" not in proc.stderr
    span = receiver.wait_for_span(semconv.VIOLATION_SPAN, timeout=5)
    assert span.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_OPENER_FINISHED
    assert receiver.wait_for_point(semconv.VIOLATIONS_METRIC, timeout=5).value == 1


# -- configuration --------------------------------------------------------------------


def test_bad_exporter_value_warns_once_and_uses_the_console(
    no_providers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCOPETRACE_EXPORTER", "zipkin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scopetrace.install()
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert messages == [
        "scopetrace: SCOPETRACE_EXPORTER='zipkin' is not valid (accepted: one of console, "
        "jsonl, otlp, none); using the default 'console'"
    ]
    runtime = current_runtime()
    assert runtime is not None and runtime.options.exporter == "console"


def test_an_unreachable_collector_delays_exit_only_by_the_otlp_timeout(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {
        **os.environ, "SCOPETRACE_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", AT_SHUTDOWN], env=env, capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    # Spans then metrics, each giving up after about the 1 s timeout (the
    # default, 10 s, would take ~16 s); generous for a slow machine.
    assert elapsed < 10, f"exit took {elapsed:.1f}s"


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["blackhole", "429", "503"])
def test_a_collector_that_never_answers_or_refuses_bounds_exit(behaviour: str) -> None:
    """A collector that accepts and never answers, or answers 429 or 503 (the
    SDK retries those with back-off): the violation costs the application
    nothing, and exit is held up by at most scopetrace's 5 s bound."""
    import socket
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Unavailable(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(int(behaviour))
            self.send_header("Retry-After", "1")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections queue up; nothing ever reads or answers
    server = None
    if behaviour != "blackhole":
        listener.close()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
    else:
        port = listener.getsockname()[1]
    timed = textwrap.dedent(
        """
        import time, scopetrace
        scopetrace.install()
        start = time.perf_counter()
        """
    ) + programs.AT_SHUTDOWN.replace("asyncio.run(main())", "asyncio.run(main())\nprint(f'violation {time.perf_counter() - start:.3f}')")
    env = {**os.environ, "SCOPETRACE_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    try:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", timed], env=env, capture_output=True,
                              text=True, timeout=60)
        elapsed = time.monotonic() - start
    finally:
        listener.close()
        if server is not None:
            server.shutdown()
    assert proc.returncode == 0, proc.stderr
    ran = float(proc.stdout.split("violation ")[1])
    assert ran < 2.0  # the program itself: never waits for the collector
    assert elapsed < ran + 5.0 + 3.0, f"exit took {elapsed:.1f}s"  # 5 s bound, slack for start-up


def test_report_groups_by_culprit_and_prints_the_advice_once(tmp_path: Path) -> None:
    """`scopetrace report` answers "which code do we fix": by culprit package and
    site, most frequent first, the advice once per culprit."""
    advice = "fastmcp 2.5.2 is affected by PrefectHQ/fastmcp#622, fixed in 2.6.0"

    def line(site: str, package: str, version: str, with_advice: bool) -> str:
        attrs = {
            semconv.VIOLATION_KIND: "wrong_task", semconv.VIOLATION_CAUSE: "sibling_task",
            semconv.OPENER_SITE: "mcp/shared/session.py:208 in BaseSession.__aenter__",
            semconv.CLOSER_SITE: "mcp/shared/session.py:223 in BaseSession.__aexit__",
            semconv.CULPRIT_SITE: site,
        }
        if package:
            attrs[semconv.CULPRIT_PACKAGE] = package
            attrs[semconv.CULPRIT_PACKAGE_VERSION] = version
        if with_advice:
            attrs[semconv.ADVICE] = advice
        return json.dumps({_jsonl.EVENT: "violation", _jsonl.TIME: "2026-01-01T00:00:00Z",
                           _jsonl.ATTRIBUTES: attrs}) + "\n"

    path = tmp_path / "v.jsonl"
    client = "fastmcp/client/client.py:250 in Client.__aenter__"
    path.write_text(
        line(client, "fastmcp", "2.5.2", True) * 3
        + line("app/tools.py:12 in Pool.__aenter__", "", "", False)
    )
    code, out, _ = _report(str(path))
    assert code == 0
    section = out.split("by culprit (the code to fix, most frequent first):\n", 1)[1]
    rows = [row.strip() for row in section.split("\n\n", 1)[0].splitlines()]
    assert rows[0] == f"3  fastmcp 2.5.2  {client}"
    assert rows.index("1  (application)  app/tools.py:12 in Pool.__aenter__") > 0
    assert out.count(f"advice: {advice}") == 1
