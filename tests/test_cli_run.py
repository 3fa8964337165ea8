"""``scopetrace run [options] -- COMMAND ...`` and, on its output, ``scopetrace report``.

The fast tests check what the command hands to COMMAND (run for real, as a
child that prints its environment); the slow ones run traced programs with
the installed wheel, where the start-up hook is present.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scopetrace import semconv
from scopetrace._sinks import _jsonl
from scopetrace._config import Options, env_name
from scopetrace._cli_run import hook_installed

from .otlp_receiver import OtlpReceiver
from .programs import ASGI_APP, REPORT, UNTRACED
from .wheelenv import WheelEnv, app, venv  # noqa: F401 - fixtures

#: A child that shows what it was given.
SHOW_ENV = (
    "import json, os, sys; "
    "print(json.dumps({'argv': sys.argv[1:], "
    "'env': {k: v for k, v in os.environ.items() if k.startswith('SCOPETRACE')}})); "
    "sys.exit(int(os.environ.get('EXIT_WITH', '0')))"
)


def scopetrace_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}
    return subprocess.run(
        [sys.executable, "-m", "scopetrace", "run", *args],
        env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )


def test_run_passes_the_switch_and_the_options_as_variables() -> None:
    proc = scopetrace_run(
        "--stack-depth", "4", "--no-exception-notes", "--exporter", "jsonl",
        "--jsonl-path", "/tmp/x.jsonl", "--",
        sys.executable, "-c", SHOW_ENV, "--port", "8000",
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["argv"] == ["--port", "8000"]  # the command's own options are its own
    assert shown["env"] == {
        "SCOPETRACE": "1",
        "SCOPETRACE_STACK_DEPTH": "4",
        "SCOPETRACE_EXCEPTION_NOTES": "0",
        "SCOPETRACE_EXPORTER": "jsonl",
        "SCOPETRACE_JSONL_PATH": "/tmp/x.jsonl",
    }


def test_run_keeps_the_variables_it_is_not_given_options_for() -> None:
    proc = scopetrace_run(sys.executable, "-c", SHOW_ENV, SCOPETRACE_RATE_LIMIT="3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["env"] == {"SCOPETRACE": "1", "SCOPETRACE_RATE_LIMIT": "3"}


def test_run_returns_the_exit_status_of_the_command() -> None:
    proc = scopetrace_run("--", sys.executable, "-c", SHOW_ENV, EXIT_WITH="3")
    assert proc.returncode == 3


def test_run_passes_bad_values_on_for_the_traced_process_to_warn_about() -> None:
    # The traced process warns once and uses the default, as for the variable
    # set by hand (tested with the wheel below).
    proc = scopetrace_run("--stack-depth", "lots", "--", sys.executable, "-c", SHOW_ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["env"]["SCOPETRACE_STACK_DEPTH"] == "lots"


def test_run_without_a_command_is_a_usage_error() -> None:
    proc = scopetrace_run("--stack-depth", "4")
    assert proc.returncode == 2
    assert "scopetrace run: no command given" in proc.stderr


def test_run_of_a_missing_command() -> None:
    proc = scopetrace_run("--", "no-such-command-scopetrace")
    assert proc.returncode == 127
    assert "scopetrace run: command not found: no-such-command-scopetrace" in proc.stderr


def test_run_says_when_the_start_up_hook_is_not_installed() -> None:
    proc = scopetrace_run("--", sys.executable, "-c", "pass")
    warned = "start-up hook (scopetrace.pth) is not installed" in proc.stderr
    assert warned == (not hook_installed())  # an editable install has no hook


def test_run_help_names_every_option_and_its_variable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scopetrace", "run", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for field in dataclasses.fields(Options):
        assert "--" + field.name.replace("_", "-") in text
        assert env_name(field.name) in text


# -- traced, with the installed wheel ----------------------------------------------------


@pytest.mark.slow
def test_run_traces_a_python_program(venv: WheelEnv, app: Path) -> None:
    proc = venv.run("scopetrace", "run", "--", "python", app)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == UNTRACED + "patched: True scopetrace imported: True\n"
    assert proc.stderr.count(REPORT) == 1
    assert "start-up hook" not in proc.stderr  # installed from the wheel


@pytest.mark.slow
def test_run_traces_every_python_process_the_command_starts(venv: WheelEnv, app: Path) -> None:
    # Any command: a shell that starts Python twice.
    proc = venv.run("scopetrace", "run", "--", "sh", "-c", f"python {app} && python {app}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("patched: True") == 2
    assert proc.stderr.count(REPORT) == 2


@pytest.mark.slow
def test_run_with_a_bad_option_warns_once_and_traces(venv: WheelEnv, app: Path) -> None:
    proc = venv.run("scopetrace", "run", "--stack-depth", "lots", "--", "python", app)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("ConfigWarning") == 1
    assert "SCOPETRACE_STACK_DEPTH='lots' is not valid (accepted: an integer from 0 to 128); " \
        "using the default 16" in proc.stderr
    assert proc.stderr.count(REPORT) == 1


@pytest.mark.slow
def test_run_to_a_jsonl_file_then_report(venv: WheelEnv, app: Path, tmp_path: Path) -> None:
    out = tmp_path / "violations.jsonl"
    for _ in range(2):  # two runs append to the same file
        proc = venv.run(
            "scopetrace", "run", "--exporter", "jsonl", "--jsonl-path", out, "--", "python", app
        )
        assert proc.returncode == 0, proc.stderr
        assert REPORT not in proc.stderr  # the file replaces the console report
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and records[0][_jsonl.PID] != records[1][_jsonl.PID]
    assert records[0][_jsonl.ATTRIBUTES][semconv.VIOLATION_CAUSE] == semconv.CAUSE_SIBLING_TASK

    report = venv.run("scopetrace", "report", out)
    assert report.returncode == 0, report.stderr
    text = report.stdout
    assert text.startswith(f"scopetrace report: 2 violation(s) and 2 orphan warning(s) in {out}")
    assert "1 distinct" in text
    assert "by kind:  wrong_task 2" in text and "by cause: sibling_task 2" in text
    assert "2  wrong_task (sibling_task), 2 process(es)" in text
    assert f"entered at {app}:" in text and f"exited at  {app}:" in text
    assert "__aexit__" in text
    assert "likely causes:\n  sibling_task: " in text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_run_traces_uvicorn_and_its_workers(venv: WheelEnv, tmp_path: Path, workers: int) -> None:
    import signal
    import time
    import urllib.error
    import urllib.request

    install = venv.run("python", "-m", "pip", "install", "-q", "uvicorn", timeout=300)
    assert install.returncode == 0, install.stderr
    (tmp_path / "service.py").write_text(ASGI_APP)
    port = _free_port()
    log = tmp_path / "uvicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(venv.bin / "scopetrace"), "run", "--", "uvicorn", "service:app",
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            cwd=tmp_path, env=venv.env(), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        statuses: list[int] = []
        while len(statuses) < workers * 3 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    statuses.append(resp.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError:
                time.sleep(0.2)  # not listening yet
        assert statuses == [500] * (workers * 3)  # anyio raised, as without tracing
        # Delivered within a bounded delay, before any signal: the console
        # blocks are written once each incident is a quarter second quiet.
        deadline = time.monotonic() + 10
        while log.read_text().count(REPORT) < workers * 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert text.count(REPORT) == workers * 3, text
    assert f"{REPORT} wrong_task (sibling_task)" in text
    assert "service.py" in text


def _get(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_sigterm_under_uvicorn_loses_no_otlp_report(venv: WheelEnv, tmp_path: Path) -> None:
    """Regression (the "Nothing lost" issue): uvicorn handles SIGTERM, then
    re-raises it with the default handler, so no atexit hook runs.  3
    violations, SIGTERM one second later: 0 spans and no counter arrived.
    Now both arrive, and the service's exit is not held up."""
    import signal
    import time

    install = venv.run("python", "-m", "pip", "install", "-q", "uvicorn", timeout=300)
    assert install.returncode == 0, install.stderr
    (tmp_path / "service.py").write_text(ASGI_APP)
    port = _free_port()
    with OtlpReceiver() as receiver:
        env = venv.env(
            SCOPETRACE="1", SCOPETRACE_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_SERVICE_NAME="sigterm",
        )
        log = tmp_path / "uvicorn.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                [str(venv.bin / "uvicorn"), "service:app", "--host", "127.0.0.1", "--port",
                 str(port)],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    assert _get(f"http://127.0.0.1:{port}/") == 500
                    break
                except OSError:
                    time.sleep(0.2)  # not listening yet
            assert [_get(f"http://127.0.0.1:{port}/") for _ in range(2)] == [500, 500]
            time.sleep(1.0)  # the burst, then SIGTERM a second later
        finally:
            server.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            server.wait(timeout=30)
        assert time.monotonic() - stopped < 10, "the exit was held up"
        assert server.returncode == -signal.SIGTERM, log.read_text()  # died as uvicorn does
        spans = receiver.wait_for(
            lambda: receiver.spans_named(semconv.VIOLATION_SPAN)
            if len(receiver.spans_named(semconv.VIOLATION_SPAN)) >= 3 else None,
            timeout=10, what="3 violation spans",
        )
        assert len(spans) == 3
        assert {s.resource["service.name"] for s in spans} == {"sigterm"}
        point = receiver.wait_for(
            lambda: next((p for p in reversed(receiver.points_of(semconv.VIOLATIONS_METRIC))
                          if p.value == 3), None),
            timeout=10, what="the counter at 3",
        )
        assert point.value == 3
