"""Nothing lost, nothing stalled (the "Nothing lost" issue): each test names what it guards.

Whole jsonl lines on a full disk and after a SIGKILL, held-back counts that
surface, reports on the delivery thread (never the SDK on the loop's),
clean text everywhere, and ``scopetrace report`` surviving any file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import scopetrace
from scopetrace import semconv
from scopetrace._sinks import _jsonl

from . import scenarios
from .conftest import Reports, Telemetry, _reset_global_providers

ROOT = Path(__file__).resolve().parent.parent
ASYNCIO: tuple[str, dict[str, object]] = ("asyncio", {})


@pytest.fixture
def no_providers() -> Any:
    _reset_global_providers()
    yield
    scopetrace.uninstall()
    _reset_global_providers()


def violate(n: int = 1) -> None:
    for _ in range(n):
        caught, outcome = scenarios.run(scenarios.sibling_gather, ASYNCIO)
        assert outcome is None and len(caught) == 1


# -- whole jsonl lines ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real, nearly full filesystem: a 64 KiB tmpfs (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): run as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_never_leaves_half_a_line(
    no_providers: None, small_disk: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Regression: on a full disk os.write() stored part of a record and the
    rest of that violation was reported nowhere; the next record was glued on."""
    path = small_disk / "violations.jsonl"
    # Fill the disk up to a few KiB: less room than one record needs.
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 3 * 1024)
    scopetrace.install(exporter="jsonl", jsonl_path=str(path))
    violate(3)
    scopetrace.flush()
    err = capfd.readouterr().err
    lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
    assert lines[-1] == b""  # the file, if any, ends with a whole line
    written = [json.loads(line) for line in lines[:-1]]  # every line parses
    # What could not be written went to stderr, with one warning: none lost.
    assert err.count("scopetrace: cannot append to SCOPETRACE_JSONL_PATH=") == 1
    assert len(written) + err.count("scopetrace: anyio cancel scope violation:") == 3
    assert len(written) < 3
    # Room again: the next record is a line of its own.
    filler.unlink()
    violate(1)
    scopetrace.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == len(written) + 1
    assert records[-1][_jsonl.EVENT] == "violation"


STORM = textwrap.dedent(
    """
    import sys, anyio, scopetrace
    sys.path.insert(0, {root!r})
    from tests import scenarios
    scopetrace.install(exporter="jsonl", jsonl_path=sys.argv[1], rate_limit=0)
    print("ready", flush=True)
    while True:
        scenarios.run(scenarios.sibling_gather, ("asyncio", {{}}))
    """
)


def test_sigkill_during_a_storm_leaves_every_line_parseable(tmp_path: Path) -> None:
    """A writer killed in the middle of a write leaves a partial last line: the
    next writer cuts it off (and says so), so every line of the file parses."""
    path = tmp_path / "violations.jsonl"
    program = STORM.format(root=str(ROOT))
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", program, str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # One more writer after the last kill repairs whatever it left.
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            import scopetrace
            from tests import scenarios
            scopetrace.install(exporter="jsonl", jsonl_path={str(path)!r})
            scenarios.run(scenarios.sibling_gather, ("asyncio", {{}}))
        """)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = path.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert len(records) > 3
    assert all(r[_jsonl.EVENT] == "violation" for r in records)


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    program = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import scopetrace
        from tests import scenarios
        scopetrace.install(exporter="jsonl", jsonl_path={str(path)!r}, rate_limit=0)
        for _ in range(30):
            scenarios.run(scenarios.sibling_gather, ("asyncio", {{}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", program]) for _ in range(4)]
    assert [p.wait(120) for p in procs] == [0] * 4
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 4 * 30
    assert len({r[_jsonl.PID] for r in records}) == 4


# -- held-back counts surface -------------------------------------------------------


def test_what_the_rate_limit_held_back_after_the_last_span_is_told(
    no_providers: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: violations held back after the last span of their key were
    reported on no span or log record (8 of 142 in a run); the counter was
    exact but the trail was not."""
    telemetry = Telemetry()
    from opentelemetry import metrics, trace

    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    scopetrace.install(rate_limit=1)  # a burst of 1, then one a second
    with caplog.at_level("ERROR", logger=semconv.LOGGER_NAME):
        violate(6)
        scopetrace.flush()  # a flush counts as the key going quiet
    spans = telemetry.finished(semconv.VIOLATION_SPAN)
    told = [r for r in caplog.records if r.name == semconv.LOGGER_NAME]
    held = [r for r in told if r.scopetrace.get(semconv.SUPPRESSED)]
    on_spans = sum(s.attributes.get(semconv.SUPPRESSED, 0) for s in spans)
    in_logs = sum(r.scopetrace[semconv.SUPPRESSED] for r in held if "held back" in r.getMessage())
    # Every violation is a span, or counted on a span, or in a held-back record.
    assert len(spans) + on_spans + in_logs == 6
    assert in_logs > 0
    points = telemetry.counter_points(semconv.VIOLATIONS_METRIC)
    assert sum(p.value for p in points) == 6  # the counter stays exact
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def test_held_back_counts_reach_the_jsonl_file_and_the_report(
    no_providers: None, tmp_path: Path
) -> None:
    path = tmp_path / "v.jsonl"
    scopetrace.install(exporter="jsonl", jsonl_path=str(path), rate_limit=1)
    violate(5)
    scopetrace.uninstall()  # delivers everything pending, as exit does
    records = [json.loads(line) for line in path.read_text().splitlines()]
    held = [r for r in records if r[_jsonl.EVENT] == _jsonl.HELD_BACK]
    assert held and sum(r[_jsonl.COUNT] for r in held) > 0
    proc = subprocess.run(
        [sys.executable, "-m", "scopetrace", "report", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("scopetrace report: 5 violation(s)")


# -- the loop's thread pays microseconds -------------------------------------------


FIRST_VIOLATION = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, {root!r})

    class Watch:
        # Records which thread imports the OpenTelemetry SDK.
        def find_spec(self, name, path=None, target=None):
            if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
                importers.add(threading.current_thread().name)
            return None

    importers = set()
    import anyio, scopetrace
    from tests import scenarios
    scopetrace.install(exporter="otlp")
    sys.meta_path.insert(0, Watch())
    caught = []
    anyio.run(scenarios.sibling_gather, caught)
    scopetrace.flush()
    print(sorted(importers), len(caught))
    """
)


def test_the_first_violation_never_builds_the_sdk_on_the_loops_thread(tmp_path: Path) -> None:
    """Regression: with SCOPETRACE_EXPORTER=otlp the first violation imported and
    built the SDK on the violating thread, blocking the loop 75-147 ms."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_VIOLATION.format(root=str(ROOT))],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    importers, caught = proc.stdout.split("] ")
    assert caught.strip() == "1"
    assert "MainThread" not in importers and "scopetrace-delivery" in importers


# -- clean text --------------------------------------------------------------------

HOSTILE = "evil\n[scopetrace] forged line\x1b[31mred\x00nul\u202eevil"


def test_hostile_names_never_reach_a_terminal_raw(
    no_providers: None, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a coroutine __qualname__ with a newline, ANSI escapes or NUL
    reached the console report and the exception note raw (two forged lines)."""
    caught: list[BaseException] = []

    async def opener() -> None:
        scope.__enter__()
        entered.set()
        await done.wait()

    async def closer() -> None:
        await entered.wait()
        try:
            scope.__exit__(None, None, None)
        except RuntimeError as exc:
            caught.append(exc)
        done.set()

    opener.__qualname__ = HOSTILE
    closer.__qualname__ = HOSTILE
    scope: Any = None
    entered: Any = None
    done: Any = None

    async def main() -> None:
        import asyncio

        nonlocal scope, entered, done
        scope, entered, done = anyio.CancelScope(), anyio.Event(), anyio.Event()
        await asyncio.gather(
            asyncio.create_task(opener(), name=HOSTILE), asyncio.create_task(closer(), name=HOSTILE)
        )

    scopetrace.install()
    with caplog.at_level("ERROR", logger=semconv.LOGGER_NAME):
        anyio.run(main)
        scopetrace.flush()
    err = capfd.readouterr().err
    texts = [err, *getattr(caught[0], "__notes__", [""]), caplog.records[0].getMessage()]
    for text in texts:
        assert "\x1b" not in text and "\x00" not in text and "\u202e" not in text
        assert "\n[scopetrace] forged line" not in text
        assert not any(line.startswith("[scopetrace]") for line in text.splitlines())
    assert "evil\\x0a[scopetrace] forged line\\x1b[31mred\\x00nul\\u202eevil" in err


def _report(path: Path, *pipe: str) -> subprocess.CompletedProcess[str]:
    command = f"{sys.executable} -m scopetrace report {path}"
    if pipe:
        command += " | " + " ".join(pipe)
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                          text=True, timeout=60)


def _good(**attrs: Any) -> dict[str, Any]:
    base = {semconv.VIOLATION_KIND: "wrong_task", semconv.VIOLATION_CAUSE: "sibling_task",
            semconv.OPENER_SITE: "a.py:1 in f", semconv.CLOSER_SITE: "a.py:2 in g"}
    return {_jsonl.EVENT: "violation", _jsonl.TIME: "2026-01-01T00:00:00Z",
            _jsonl.ATTRIBUTES: {**base, **attrs}}


def test_report_survives_any_file(tmp_path: Path) -> None:
    """Regression: `scopetrace report` printed sites raw, crashed with
    RecursionError on a deeply nested line, trusted a negative count."""
    path = tmp_path / "hostile.jsonl"
    lines = [
        json.dumps(_good(**{semconv.OPENER_SITE: "x.py:1 in \x1b[2J\x1b[31mf\nforged"})),
        "[" * 100_000 + "]" * 100_000,
        json.dumps(_good(**{semconv.SUPPRESSED: -5})),
        json.dumps(_good(**{semconv.SUPPRESSED: 10**30})),
        '{"attributes": {"anyio.cancel_scope.suppressed": 1' + "0" * 5000 + "}}",
        json.dumps({_jsonl.ATTRIBUTES: ["not", "a", "dict"]}),
        json.dumps(_good(**{semconv.VIOLATION_KIND: {"nested": ["odd"]}})),
        "\x00\x01 not json at all",
    ]
    path.write_text("\n".join(lines) + "\n")
    proc = _report(path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "\x1b" not in proc.stdout and "\nforged" not in proc.stdout
    assert "\\x1b[2J" in proc.stdout
    # The three good lines count 1 each: a negative or absurd count is ignored.
    assert proc.stdout.startswith("scopetrace report: 4 violation(s)")
    assert "line(s) skipped" in proc.stdout


def test_report_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(
        json.dumps(_good(**{semconv.OPENER_SITE: f"a.py:{i} in f"})) + "\n" for i in range(3000)
    ))
    proc = _report(path, "head", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("scopetrace report:")
    assert proc.stderr == ""


# -- records that cannot lie ---------------------------------------------------------


def test_a_task_destroyed_while_pending_never_hides_a_later_one(telemetry: Telemetry) -> None:
    """Regression: the orphan watcher was keyed by id(task); a task destroyed
    while pending left its entry forever, and a later task at the same address
    was never watched (108 of 300 orphans went unreported)."""
    import asyncio
    import gc
    import logging

    scopetrace.install(exporter="none", rate_limit=0)
    seen = Reports(violations_only=False)
    from scopetrace._install import current_runtime

    runtime = current_runtime()
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)
    kept: list[Any] = []

    async def main() -> None:
        async def stuck() -> None:
            with anyio.CancelScope():
                await asyncio.get_running_loop().create_future()  # never done

        tasks = [asyncio.create_task(stuck()) for _ in range(300)]
        await asyncio.sleep(0)
        del tasks
        gc.collect()  # destroyed while pending: their done-callbacks never run

        async def leak() -> None:
            scope = anyio.CancelScope()
            scope.__enter__()
            kept.append(scope)

        await asyncio.gather(*(leak() for _ in range(300)))
        await asyncio.sleep(0)  # the done-callbacks of the gathered tasks

    logging.getLogger("asyncio").disabled = True  # "Task was destroyed but it is pending!"
    try:
        anyio.run(main)
    finally:
        logging.getLogger("asyncio").disabled = False
    orphans = [r for r in seen if not r.is_violation]
    assert len(orphans) == 300
    points = telemetry.counter_points(semconv.ORPHANED_METRIC)
    assert sum(p.value for p in points) == 300
    assert runtime.internal_errors == 0


def test_trio_records_do_not_keep_dead_tasks_alive() -> None:
    """Regression: trio records held the Task itself (200 of 200 dead tasks kept alive)."""
    import gc
    import weakref

    import trio

    scopetrace.install(exporter="none")
    refs: list[Any] = []
    kept: list[Any] = []

    async def leak() -> None:
        refs.append(weakref.ref(trio.lowlevel.current_task()))
        scope = trio.CancelScope()
        scope.__enter__()  # left open: its record stays in the table
        kept.append(scope)

    async def main() -> None:
        for _ in range(200):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leak)

    try:
        trio.run(main)
    except BaseException:
        pass  # trio refuses a task that ends inside a scope it entered
    gc.collect()
    assert len(refs) == 200
    assert sum(ref() is not None for ref in refs) == 0


def test_loops_in_threads_with_a_tiny_cap_make_no_internal_errors() -> None:
    """Regression: Runtime.evict() iterated the shared dict while another
    thread's loop inserted (RuntimeError: dictionary changed size)."""
    import threading

    scopetrace.install(exporter="none", max_open_scopes=1000)
    from scopetrace._install import current_runtime

    runtime = current_runtime()
    assert runtime is not None
    kept: list[Any] = []

    async def work() -> None:
        for _ in range(1500):
            scope = anyio.CancelScope()
            scope.__enter__()  # never exited: the table hits its cap again and again
            kept.append(scope)
            with anyio.CancelScope():
                await anyio.lowlevel.checkpoint()

    def loop(backend: str) -> None:
        try:
            anyio.run(work, backend=backend)
        except BaseException:
            if backend != "trio":  # trio refuses a task that ends inside its scope
                raise

    threads = [
        threading.Thread(target=loop, args=(b,)) for b in ("asyncio", "trio", "asyncio", "trio")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert runtime.internal_errors == 0
    assert len(runtime.records) <= 1000 + 4  # the cap, give or take the enters in flight


# -- configuration that never turns tracing off -----------------------------------------


def test_warnings_as_errors_leave_tracing_on_with_defaults() -> None:
    """Regression: under -W error one bad SCOPETRACE_* value turned tracing off."""
    env = {**os.environ, "PYTHONWARNINGS": "error", "SCOPETRACE_STACK_DEPTH": "lots"}
    program = (
        "import scopetrace; from scopetrace._install import current_options; "
        "scopetrace.install(); print(scopetrace.is_installed(), current_options().stack_depth)"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", program], capture_output=True, text=True,
        timeout=60, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "16"]
    assert proc.stderr.count("SCOPETRACE_STACK_DEPTH='lots' is not valid") == 1


def test_empty_values_mean_the_default() -> None:
    """Regression: an empty SCOPETRACE_EXCEPTION_NOTES silently meant off."""
    import warnings

    from scopetrace._config import Options, resolve

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = resolve({}, environ={f"SCOPETRACE_{f.upper()}": "" for f in (
            "exception_notes", "stack_depth", "exporter", "rate_limit", "log_level")})
    assert options == Options()


def test_a_misspelt_variable_gets_one_warning_with_the_right_name() -> None:
    import warnings

    from scopetrace._config import ConfigWarning, warn_environment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_environment({"SCOPETRACE_RATELIMIT": "5", "SCOPETRACE_TEST_ANYTHING": "x"})
        warn_environment({"SCOPETRACE_RATELIMIT": "5"})
    messages = [str(w.message) for w in caught if w.category is ConfigWarning]
    assert messages == [
        "scopetrace: SCOPETRACE_RATELIMIT is not a scopetrace setting (did you mean "
        "SCOPETRACE_RATE_LIMIT?); it is ignored"
    ]


RACE = textwrap.dedent(
    """
    import sys, threading
    import scopetrace

    def churn():
        for _ in range(300):
            scopetrace.install(exporter="none")
            scopetrace.uninstall()

    t = threading.Thread(target=churn)
    t.start()
    import trio, anyio._backends._asyncio  # first imports, racing the churn
    t.join()
    scopetrace.install(exporter="none")
    print(type(trio.CancelScope.__enter__).__name__, scopetrace.is_installed())
    """
)


def test_install_racing_a_first_import_cannot_deadlock() -> None:
    """Regression: _install's lock taken before the import lock in one thread and
    after it in another (a first import firing the post-import hook)."""
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["function", "True"]
