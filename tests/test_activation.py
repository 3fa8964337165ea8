"""SCOPETRACE=1 turns tracing on at interpreter start-up, with no code change.

The fast tests drive the start-up hook module directly; the slow ones install
the real wheel into a fresh venv and run programs that never import
scopetrace, as an operator would.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import scopetrace
from scopetrace import semconv
from scopetrace._activate import switched_on
from scopetrace._config import ConfigWarning, Options, env_name
from scopetrace._install import current_options

from .otlp_receiver import OtlpReceiver
from .programs import AT_SHUTDOWN, REPORT, UNTRACED
from .wheelenv import WheelEnv, app, venv  # noqa: F401 - fixtures

# -- the switch and the hook, in this environment ----------------------------------


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_switch_on_values(value: str) -> None:
    assert switched_on({"SCOPETRACE": value})


@pytest.mark.parametrize("value", [None, "", "0", "false", "No", "off"])
def test_switch_off_values(value: str | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not switched_on({} if value is None else {"SCOPETRACE": value})


def test_switch_bad_value_warns_once_and_is_off() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not switched_on({"SCOPETRACE": "maybe"})
    assert [str(w.message) for w in caught if w.category is ConfigWarning] == [
        "scopetrace: SCOPETRACE='maybe' is not valid (accepted: 1/true/yes/on or "
        "0/false/no/off); tracing stays off"
    ]


def _hook(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run code after calling the start-up hook as site.py would, in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}
    program = "import _scopetrace_startup; _scopetrace_startup.start()\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program], env={**clean, **env},
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("value", [None, "", "0"])
def test_hook_off_imports_nothing(value: str | None) -> None:
    env = {} if value is None else {"SCOPETRACE": value}
    proc = _hook(
        """
        import sys
        print(sorted(m for m in sys.modules if m.startswith(("scopetrace", "anyio", "wrapt", "opentelemetry"))))
        """,
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n" and proc.stderr == ""


def test_hook_on_installs_once_even_when_called_again() -> None:
    proc = _hook(
        """
        import _scopetrace_startup
        import scopetrace._install as inst
        first = inst.current_runtime()
        _scopetrace_startup.start()
        print(inst.is_installed(), inst.current_runtime() is first)
        """,
        SCOPETRACE="1", SCOPETRACE_STACK_DEPTH="deep",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "True True\n"
    # One warning for the bad option: the configuration was read once.
    assert proc.stderr.count("SCOPETRACE_STACK_DEPTH='deep' is not valid") == 1


def test_hook_never_raises_when_scopetrace_cannot_start() -> None:
    # Blocking the import is how Python marks a module as unavailable.
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os, sys
            sys.modules["scopetrace._activate"] = None
            import _scopetrace_startup
            # Where the wheel is installed, the .pth already ran the hook at
            # start-up (with SCOPETRACE unset): run it afresh.
            _scopetrace_startup._started = False
            os.environ["SCOPETRACE"] = "1"
            _scopetrace_startup.start()
            print("application runs")
            """
        )],
        env={k: v for k, v in os.environ.items() if k != "SCOPETRACE"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout == "application runs\n"
    assert proc.stderr.startswith("scopetrace: SCOPETRACE is set but tracing could not start (ModuleNotFoundError")
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_the_opentelemetry_instrumentor_entry_point_installs_and_uninstalls() -> None:
    (entry,) = [
        ep for ep in importlib.metadata.entry_points(group="opentelemetry_instrumentor")
        if ep.name == "scopetrace"
    ]
    instrumentor = entry.load()()
    instrumentor.instrument(stack_depth=4)
    try:
        options = current_options()
        assert scopetrace.is_installed() and options is not None and options.stack_depth == 4
    finally:
        instrumentor.uninstrument()
    assert not scopetrace.is_installed()


def test_the_instrumentor_honours_a_private_tracer_and_meter_provider() -> None:
    """Regression (the "One pipeline" issue): instrument(tracer_provider=...,
    meter_provider=...) was ignored, as no contrib instrumentation does."""
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from scopetrace._instrumentor import ScopetraceInstrumentor

    from . import scenarios

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # none global
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = ScopetraceInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            exporter="none")
    try:
        scenarios.run(scenarios.sibling_gather, ("asyncio", {}))
        names = [s.name for s in spans.get_finished_spans()]
        assert names.count(semconv.VIOLATION_SPAN) == 1
        data = reader.get_metrics_data()
        counted = [
            point.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == semconv.VIOLATIONS_METRIC for point in m.data.data_points
        ]
        assert counted == [1]
    finally:
        instrumentor.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()
    assert not scopetrace.is_installed()
    from anyio._backends import _asyncio

    assert not hasattr(_asyncio.CancelScope.__enter__, "__wrapped__")


# -- the installed wheel -----------------------------------------------------------------


slow = pytest.mark.slow


@slow
def test_the_wheel_ships_the_hook_for_pth_and_pep_829(venv: WheelEnv) -> None:
    sp = venv.site_packages
    assert (sp / "scopetrace.pth").read_text().splitlines()[-1] == (
        "import _scopetrace_startup; _scopetrace_startup.start()"
    )
    entries = [
        line for line in (sp / "scopetrace.start").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert entries == ["_scopetrace_startup:start"]
    assert (sp / "_scopetrace_startup.py").is_file()
    # pip knows the files, so uninstalling removes them.
    (record,) = sp.glob("scopetrace-*.dist-info/RECORD")
    recorded = {line.split(",")[0] for line in record.read_text().splitlines()}
    assert {"scopetrace.pth", "scopetrace.start", "_scopetrace_startup.py"} <= recorded


@slow
def test_scopetrace_1_traces_a_program_that_never_imports_it(venv: WheelEnv, app: Path) -> None:
    proc = venv.run("python", app, env={"SCOPETRACE": "1"})
    assert proc.returncode == 0, proc.stderr
    # anyio behaves exactly as without tracing...
    assert proc.stdout == UNTRACED + "patched: True scopetrace imported: True\n"
    # ...and the violation is reported, with both tasks.
    assert proc.stderr.count(REPORT) == 1
    assert f"{REPORT} wrong_task (sibling_task)" in proc.stderr
    assert f"at {app}:" in proc.stderr


@slow
@pytest.mark.parametrize("value", [None, "0", ""], ids=["unset", "0", "empty"])
def test_without_the_switch_anyio_is_untouched(venv: WheelEnv, app: Path, value: str | None) -> None:
    proc = venv.run("python", app, env={} if value is None else {"SCOPETRACE": value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == UNTRACED + "patched: False scopetrace imported: False\n"
    assert proc.stderr == ""


@slow
def test_a_bad_switch_value_warns_once_and_leaves_anyio_untouched(venv: WheelEnv, app: Path) -> None:
    proc = venv.run("python", app, env={"SCOPETRACE": "please"})
    assert proc.returncode == 0, proc.stderr
    assert "patched: False" in proc.stdout
    assert proc.stderr.count("ConfigWarning") == 1
    assert "SCOPETRACE='please' is not valid (accepted: 1/true/yes/on or 0/false/no/off); " \
        "tracing stays off" in proc.stderr
    assert REPORT not in proc.stderr


@slow
def test_a_bad_option_warns_once_and_tracing_goes_on(venv: WheelEnv, app: Path) -> None:
    proc = venv.run(
        "python", app, env={"SCOPETRACE": "1", "SCOPETRACE_LOG_LEVEL": "loud", "SCOPETRACE_RATE_LIMIT": "-1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("ConfigWarning") == 2
    assert "SCOPETRACE_LOG_LEVEL='loud' is not valid (accepted: one of debug, info, warning, " \
        "error, critical); using the default 'error'" in proc.stderr
    assert "SCOPETRACE_RATE_LIMIT='-1' is not valid" in proc.stderr
    assert proc.stderr.count(REPORT) == 1


@slow
def test_the_hook_runs_once_when_site_processes_the_pth_again(venv: WheelEnv, app: Path) -> None:
    again = app.parent / "again.py"
    again.write_text(
        "import site\n"
        "for d in site.getsitepackages():\n"
        "    site.addsitedir(d)  # runs every .pth import line of the directory again\n"
        + app.read_text()
    )
    proc = venv.run("python", again, env={"SCOPETRACE": "1", "SCOPETRACE_STACK_DEPTH": "deep"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("SCOPETRACE_STACK_DEPTH='deep' is not valid") == 1
    assert proc.stderr.count(REPORT) == 1  # patched once, so reported once


@slow
def test_anyio_imported_before_the_hook_is_patched_too(venv: WheelEnv, app: Path) -> None:
    # A .pth sorted before scopetrace's imports anyio first.
    early = venv.site_packages / "aaa_imports_anyio_early.pth"
    early.write_text(  # setdefault: site.py runs a venv's .pth files twice
        "import sys, anyio._backends._asyncio; "
        "sys.__dict__.setdefault('anyio_first', 'scopetrace' not in sys.modules)\n"
    )
    try:
        probe = app.read_text() + "print('anyio first:', sys.anyio_first)\n"
        app.write_text(probe)
        proc = venv.run("python", app, env={"SCOPETRACE": "1"})
    finally:
        early.unlink()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("patched: True scopetrace imported: True\nanyio first: True\n")
    assert proc.stderr.count(REPORT) == 1


@slow
def test_the_pep_829_start_entry_point_activates(venv: WheelEnv, app: Path) -> None:
    # What site.py does with scopetrace.start on Python 3.15+, where the .pth
    # import line is skipped: resolve each entry point and call it.  -S keeps
    # this site.py from running the .pth, so only the entry point can act.
    program = textwrap.dedent(
        f"""
        import pkgutil, runpy, sys
        sys.path.append({str(venv.site_packages)!r})
        for line in open({str(venv.site_packages / 'scopetrace.start')!r}):
            if line.strip() and not line.startswith("#"):
                pkgutil.resolve_name(line.strip())()
        runpy.run_path({str(app)!r}, run_name="__main__")
        """
    )
    proc = venv.run("python", "-S", "-c", program, env={"SCOPETRACE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "patched: True" in proc.stdout
    assert proc.stderr.count(REPORT) == 1


# -- OTLP on the wire -------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _otlp_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "SCOPETRACE": "1",
        "SCOPETRACE_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "agents-api",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=production",
        # Far longer than the test: only the flush at exit can deliver in time.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }


@slow
def test_otlp_receives_the_span_of_an_unmodified_program(
    venv: WheelEnv, app: Path, receiver: OtlpReceiver
) -> None:
    proc = venv.run("python", app, env=_otlp_env(receiver))
    assert proc.returncode == 0, proc.stderr
    assert REPORT not in proc.stderr  # it went to the collector instead
    span = receiver.wait_for_span(semconv.VIOLATION_SPAN, timeout=10)
    a = span.attributes
    assert (a[semconv.VIOLATION_KIND], a[semconv.VIOLATION_CAUSE]) == ("wrong_task", "sibling_task")
    assert a[semconv.OPENER_TASK_NAME] != a[semconv.CLOSER_TASK_NAME]
    assert a[semconv.OPENER_SITE].startswith(f"{app}:")
    assert a[semconv.CLOSER_SITE].startswith(f"{app}:")
    assert "__aexit__" in a[semconv.CLOSER_STACKTRACE]
    assert span.resource["service.name"] == "agents-api"
    assert span.resource["deployment.environment"] == "production"
    point = receiver.wait_for_point(semconv.VIOLATIONS_METRIC, timeout=10)
    assert point.value == 1 and point.attributes[semconv.VIOLATION_KIND] == "wrong_task"
    assert receiver.errors == []


@slow
def test_otlp_receives_a_violation_that_happens_at_shutdown(
    venv: WheelEnv, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AT_SHUTDOWN)
    proc = venv.run("python", script, env=_otlp_env(receiver))
    assert proc.returncode == 0, proc.stderr
    span = receiver.wait_for_span(semconv.VIOLATION_SPAN, timeout=10)
    assert span.attributes[semconv.VIOLATION_CAUSE] == semconv.CAUSE_ASYNCGEN_FINALIZER
    assert span.attributes[semconv.OPENER_SITE].startswith(f"{script}:")


# -- opentelemetry-instrument ---------------------------------------------------------------


@slow
def test_opentelemetry_instrument_enables_scopetrace(venv: WheelEnv, app: Path) -> None:
    proc = venv.run("opentelemetry-instrument", "python", app)
    assert proc.returncode == 0, proc.stderr
    assert "patched: True" in proc.stdout
    assert proc.stderr.count(REPORT) == 1


@slow
def test_opentelemetry_instrument_honours_disabled_instrumentations(venv: WheelEnv, app: Path) -> None:
    proc = venv.run(
        "opentelemetry-instrument", "python", app,
        env={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests, scopetrace"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "patched: False" in proc.stdout
    assert REPORT not in proc.stderr


def test_the_production_doc_documents_every_option() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `SCOPETRACE")}
    assert "SCOPETRACE" in rows
    for field in dataclasses.fields(Options):
        row = rows[env_name(field.name)]
        assert f"`{field.name}`" in row and f"`--{field.name.replace('_', '-')}" in row
        default = field.default
        shown = ("on" if default else "off") if isinstance(default, bool) else f"`{default:g}`" \
            if isinstance(default, float) else f"`{default}`"
        assert shown in row, (field.name, row)



@slow
def test_scopetrace_1_traces_a_pytest_run(venv: WheelEnv, tmp_path: Path) -> None:
    """Regression (the culprit issue): under `SCOPETRACE=1 pytest` nothing was
    traced: pytest's assertion-rewriting import hook, in front of scopetrace's,
    loaded anyio's backends itself (anyio ships a pytest plugin), unpatched."""
    install = venv.run("python", "-m", "pip", "install", "-q", "pytest", timeout=300)
    assert install.returncode == 0, install.stderr
    (tmp_path / "test_app.py").write_text(textwrap.dedent(
        """
        import asyncio
        import anyio

        def test_shared_scope():
            async def main():
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
            asyncio.run(main())
        """
    ))
    proc = venv.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                    cwd=tmp_path, env={"SCOPETRACE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{REPORT} wrong_task" in proc.stdout + proc.stderr


@slow
def test_an_anyio_older_than_supported_gets_one_warning(tmp_path: Path) -> None:
    """Regression: an anyio below the supported floor got no warning."""
    venv = tmp_path / "old"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "anyio==4.6.2", "opentelemetry-api"], check=True, timeout=600)
    src = Path(__file__).resolve().parent.parent / "src"
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import scopetrace, anyio._backends._asyncio; scopetrace.install(exporter='none'); "
         "print(scopetrace.is_installed())"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(src), "SCOPETRACE_NO_EXTENSIONS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert proc.stderr.count("anyio 4.6.2 is older than scopetrace supports (anyio>=4.7)") == 1
