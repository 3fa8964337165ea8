"""Verify scopetrace's culprit, advice, blocker, fixture and incidents on real libraries.

    python compat/verify_culprits.py                         # every case, 2 at a time
    python compat/verify_culprits.py --case fastmcp --case anyio-1179
    python compat/verify_culprits.py --list                  # the cases and their runs
    python compat/verify_culprits.py --keep-venvs --venv-root /var/tmp/vc
    python compat/verify_culprits.py --details failures.md   # stacks of every failing report
    python compat/verify_culprits.py --keep-work             # keep every run's jsonl and output

.ci/run calls it with ``--venv-root "${TMPDIR:-/tmp}"``; about 2-3 minutes on 2 cores
with uv's wheel cache warm (35 runs, 13 cases, 2 cases at a time).

Each case is a real library from PyPI at the release a known bug affects (or
the code pattern a user gets wrong) and at its first fixed release (or the
fixed pattern, where no release fixes it).  For each run this

1. makes a throw-away venv under ``--venv-root`` (default: the temporary
   directory) with ``uv`` (found on PATH, in ``build/matrix/uv`` of this
   checkout, or installed from PyPI into ``<venv-root>/scopetrace-verify-uv``),
   holding the pinned releases and scopetrace built from THIS checkout (an
   sdist, then a wheel from it: a normal, non-editable install, made once per
   run of this script so every case tests the same snapshot of ``src/``);
2. runs the case's driver from ``compat/culprits/`` (copied into a work
   directory, with ``_driver.py``, what the drivers share), offline: MCP servers are subprocesses on stdio or 127.0.0.1,
   everything is ordered by events.  Plain drivers call
   ``scopetrace.install(exporter="jsonl", ...)`` themselves; test-runner cases
   run ``pytest --scopetrace`` with ``SCOPETRACE_EXPORTER=jsonl``;
3. reads the jsonl file (one line per incident, its reports in ``attributes``
   and ``related``) and checks every report against the case's expectation:
   the number of reports of each kind; the culprit's file and function (never
   anyio, asyncio, trio or contextlib unless the expectation says so); its
   package and version (absent for the application's own code); the advice
   (present, with the expected words, where the known-bug table has an entry;
   absent where not); the scope in the way for ``not_innermost``; the cause;
   the fixture's name and runner; the number of incidents; that every
   cancel-scope error the application saw produced a report; and, for the
   fixed release or pattern, that nothing at all was reported.

The expectations below are the truth: a case fails until scopetrace's
diagnosis matches them.  Prints one table row per run and the reasons for
each failure; exit status 1 if any run failed (2 if a venv could not be made).

Options: ``--case NAME`` (repeatable; default all), ``--keep-venvs`` (keep
them for the next run, which then only reinstalls scopetrace), ``--venv-root
DIR``, ``--jobs N`` (cases at once, default 2), ``--python EXE`` (the venvs'
interpreter, default this one), ``--details FILE`` (markdown: both stacks of
every failing report, non-plumbing frames, async generators marked).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DRIVERS = REPO / "compat" / "culprits"
#: The drivers' shared helpers: copied next to every driver, which imports it.
HELPER = "_driver.py"

# jsonl attribute keys (scopetrace.semconv; repeated here: this script runs
# without scopetrace installed)
KIND = "anyio.cancel_scope.violation.kind"
CAUSE = "anyio.cancel_scope.violation.cause"
INCIDENT = "anyio.cancel_scope.incident.id"
CULPRIT = "anyio.cancel_scope.culprit.site"
REASON = "anyio.cancel_scope.culprit.reason"
PACKAGE = "anyio.cancel_scope.culprit.package"
VERSION = "anyio.cancel_scope.culprit.package.version"
ADVICE = "anyio.cancel_scope.advice"
BLOCKER = "anyio.cancel_scope.blocker.site"
BLOCKER_STACK = "anyio.cancel_scope.blocker.stacktrace"
BLOCKER_COUNT = "anyio.cancel_scope.blocker.count"
FIXTURE = "anyio.cancel_scope.fixture.name"
RUNNER = "anyio.cancel_scope.fixture.runner"
OPENER_STACK = "anyio.cancel_scope.opener.stacktrace"
CLOSER_STACK = "anyio.cancel_scope.closer.stacktrace"
OPENER_SITE = "anyio.cancel_scope.opener.site"
OPENER_TASK = "anyio.cancel_scope.opener.task.name"
CLOSER_TASK = "anyio.cancel_scope.closer.task.name"

#: Files of the machinery of scopes and tasks: never the culprit unless expected.
PLUMBING = re.compile(r"(/anyio/|/asyncio/|/trio/|/contextlib\.py$|/exceptiongroup/|/sniffio/)")

RUN_TIMEOUT = 240.0


# -- expectations ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Site:
    """An expected frame: a path suffix and the qualnames accepted (any if empty)."""

    file: str
    functions: tuple[str, ...] = ()
    #: The file is anyio's (or asyncio's ...) and that is right (anyio#1179).
    plumbing_ok: bool = False

    def describe(self) -> str:
        name = "/".join(self.file.split("/")[-2:])
        return f"{name} {'|'.join(self.functions)}".strip()

    def problems(self, site: str | None, what: str) -> list[str]:
        if not site:
            return [f"no {what}"]
        path, _, function = _split_site(site)
        out = []
        if not path.endswith(self.file):
            out.append(f"{what} file {_short(path)} does not end with {self.file}")
        if self.functions and function not in self.functions:
            out.append(f"{what} function {function} is not {' or '.join(self.functions)}")
        if not self.plumbing_ok and PLUMBING.search(path):
            out.append(f"{what} is in anyio/asyncio/trio/contextlib: {_short(path)}")
        return out


APP = "app"  #: package expectation: the application's own code (no package)


@dataclasses.dataclass(frozen=True)
class Reports:
    """Reports of one event and kind, and what each of them must say.

    ``count``: exactly that many (an int), or at least ``n`` ("n+").
    ``package``: (distribution, version), or APP for the application's code.
    ``advice``: words the advice must contain, or None: no advice at all.
    ``blocker``: for ``not_innermost``, the scope in the way (its site).
    """

    event: str  # "violation" or "orphaned"
    kind: str | None = None  # violations: wrong_task / not_innermost
    count: int | str = 1
    cause: str | tuple[str, ...] | None = None
    culprit: Site | None = None
    package: tuple[str, str] | str | None = None
    advice: str | None = None
    blocker: Site | None = None
    #: How many scopes in the way the report may count (None: not checked).
    blocker_count: tuple[int, ...] | None = None
    #: (fixture name, or the names accepted; the runner)
    fixture: tuple[str | tuple[str, ...], str] | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.event, self.kind)


@dataclasses.dataclass(frozen=True)
class Run:
    """One driver run in one venv: the affected release, the fixed one, a pattern."""

    label: str  # "affected", "fixed", "fixed pattern", ...
    release: str  # what the table shows, e.g. "fastmcp 2.5.2"
    pins: tuple[str, ...]
    driver: str  # file in compat/culprits/
    args: tuple[str, ...] = ()
    pytest: bool = False  # run the driver with pytest --scopetrace
    extra_files: tuple[str, ...] = ()  # other files of compat/culprits/ the driver needs
    #: None: nothing may be reported and the application sees no cancel-scope error.
    reports: tuple[Reports, ...] | None = None
    incidents: int | None = None  # distinct incident ids
    #: The application must see a cancel-scope error (the release is affected).
    app_errors: bool | None = None
    #: pytest's closing counts that must match exactly, e.g. {"passed": 2, "skipped": 1}.
    pytest_counts: dict[str, int] | None = None
    #: Further checks: f(result) -> list of problems.
    checks: tuple[Callable[[RunResult], list[str]], ...] = ()

    @property
    def clean(self) -> bool:
        return self.reports is None


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    summary: str
    runs: tuple[Run, ...]


# -- results ----------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    event: str
    attrs: dict[str, Any]
    incident: str
    line: int  # which jsonl line

    @property
    def kind(self) -> str | None:
        return self.attrs.get(KIND)


@dataclasses.dataclass
class RunResult:
    case: str
    run: Run
    reports: list[Report] = dataclasses.field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    app: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    failing: list[tuple[Report, list[str]]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    venv: Path | None = None
    work: Path | None = None  # kept when the run failed

    @property
    def passed(self) -> bool:
        return not self.problems and not self.failing


def _split_site(site: str) -> tuple[str, int, str]:
    where, _, function = site.rpartition(" in ")
    path, _, line = where.rpartition(":")
    try:
        return path, int(line), function
    except ValueError:
        return where, 0, function


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail if marker == "site-packages/" else "<stdlib>/" + tail.split("/", 1)[-1]
    return os.path.basename(path) if "/verify-culprits-work-" in path else path


def _short_site(site: str | None) -> str:
    if not site:
        return "-"
    path, line, function = _split_site(site)
    return f"{_short(path)}:{line} {function}"


def read_reports(path: Path) -> tuple[list[Report], list[str]]:
    reports: list[Report] = []
    problems: list[str] = []
    if not path.exists():
        return reports, problems
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            problems.append(f"jsonl line {n} is not JSON")
            continue
        if record.get("event") == "held_back":
            problems.append(f"jsonl line {n}: reports were held back by the rate limit")
            continue
        incident = record.get("incident", "")
        reports.append(Report(record["event"], record["attributes"], incident, n))
        reports.extend(Report(r["event"], r["attributes"], incident, n) for r in record.get("related", ()))
    return reports, problems


# -- checking -----------------------------------------------------------------------------


def _count_ok(expected: int | str, actual: int) -> bool:
    if isinstance(expected, str) and expected.endswith("+"):
        return actual >= int(expected[:-1])
    return actual == int(expected)


def check_report(report: Report, spec: Reports) -> list[str]:
    a = report.attrs
    out: list[str] = []
    if spec.cause is not None:
        causes = (spec.cause,) if isinstance(spec.cause, str) else spec.cause
        if a.get(CAUSE) not in causes:
            out.append(f"cause {a.get(CAUSE)} is not {' or '.join(causes)}")
    if spec.culprit is not None:
        out += spec.culprit.problems(a.get(CULPRIT), "culprit")
    if spec.package == APP:
        if PACKAGE in a:
            out.append(f"culprit package {a.get(PACKAGE)} {a.get(VERSION)} given for the application's own code")
    elif spec.package is not None:
        name, version = spec.package
        if (a.get(PACKAGE), a.get(VERSION)) != (name, version):
            out.append(f"culprit package {a.get(PACKAGE)} {a.get(VERSION)} is not {name} {version}")
    if spec.advice is None:
        if a.get(ADVICE):
            out.append(f"advice given where the table has none: {a[ADVICE]!r}")
    elif spec.advice not in (a.get(ADVICE) or ""):
        out.append(f"advice {a.get(ADVICE)!r} does not say {spec.advice!r}")
    if report.kind == "not_innermost":
        if spec.blocker is None:
            out.append("spec error: a not_innermost expectation without a blocker")
        else:
            out += spec.blocker.problems(a.get(BLOCKER), "blocker")
        if spec.blocker_count is not None and a.get(BLOCKER_COUNT) not in spec.blocker_count:
            out.append(f"blocker count {a.get(BLOCKER_COUNT)} is not {' or '.join(map(str, spec.blocker_count))}")
    if spec.fixture is not None and report.event == "violation":
        names, runner = spec.fixture
        names = (names,) if isinstance(names, str) else names
        if a.get(FIXTURE) not in names or a.get(RUNNER) != runner:
            out.append(f"fixture {a.get(FIXTURE)!r} / runner {a.get(RUNNER)!r} is not "
                       f"{' or '.join(map(repr, names))} / {runner!r}")
    return out


def check(result: RunResult) -> None:
    run = result.run
    reports = result.reports
    if result.returncode != 0:
        result.problems.append(f"driver exited with {result.returncode}")
    errors = [e for e in result.app.get("errors", ()) if _scope_error(e)]
    if run.app_errors is not None and not run.pytest:
        if run.app_errors and not errors:
            result.problems.append("the application saw no cancel scope error: is this release affected?")
        if not run.app_errors and errors:
            result.problems.append(f"the application saw cancel scope errors: {errors[:2]}")
    if run.clean:
        if reports:
            result.problems.append(
                f"{len(reports)} report(s) where none is expected: "
                + "; ".join(f"{r.event} {r.kind or ''} {_short_site(r.attrs.get(OPENER_SITE))}" for r in reports[:4])
            )
        if errors and run.app_errors is None:
            result.problems.append(f"the application saw cancel scope errors: {errors[:2]}")
    else:
        assert run.reports is not None
        specs = {s.key: s for s in run.reports}
        seen: dict[tuple[str, str | None], int] = {}
        for report in reports:
            key = (report.event, report.kind)
            seen[key] = seen.get(key, 0) + 1
            spec = specs.get(key)
            if spec is None:
                result.failing.append((report, [f"unexpected {report.event} {report.kind or ''}".strip()]))
                continue
            problems = check_report(report, spec)
            if problems:
                result.failing.append((report, problems))
        for key, spec in specs.items():
            if not _count_ok(spec.count, seen.get(key, 0)):
                result.problems.append(
                    f"{seen.get(key, 0)} {key[0]} {key[1] or ''} report(s), expected {spec.count}".replace("  ", " ")
                )
        # (a) every error the application saw produced a report of its kind
        kinds = {r.kind for r in reports if r.event == "violation"}
        for error in errors:
            want = "not_innermost" if ("isn't the current" in error or "corrupted" in error) else "wrong_task"
            if want not in kinds:
                result.problems.append(f"no {want} report for the application's error {error[:90]!r}")
        if run.incidents is not None:
            ids = {r.incident for r in reports}
            if len(ids) != run.incidents:
                result.problems.append(f"{len(ids)} incident(s), expected {run.incidents}")
    if run.pytest_counts is not None:
        counts = pytest_counts(result.stdout)
        for name, n in run.pytest_counts.items():
            if counts.get(name, 0) != n:
                result.problems.append(f"pytest: {counts.get(name, 0)} {name}, expected {n} ({counts})")
    for extra in run.checks:
        result.problems += extra(result)


def _scope_error(text: str) -> bool:
    """anyio's (or trio's) refusal to exit a scope, as the application saw it."""
    return any(s in text for s in ("Attempted to exit", "Cancel scope stack corrupted", "different task",
                                   "isn't the current task", "cancel scope error"))


def pytest_counts(stdout: str) -> dict[str, int]:
    lines = [ln for ln in stdout.splitlines() if re.search(r"\d+ (passed|failed|errors?|skipped)", ln)]
    if not lines:
        return {}
    counts: dict[str, int] = {}
    for n, name in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|warnings?)", lines[-1]):
        name = {"errors": "error", "warnings": "warning"}.get(name, name)
        counts[name] = int(n)
    return counts


# -- the cases ------------------------------------------------------------------------------

PAI_SERVER = Site("pydantic_ai/mcp.py", ("MCPServer.__aenter__",))
FASTMCP_CLIENT = Site("fastmcp/client/client.py", ("Client.__aenter__",))
AGENTS_SERVER = Site("agents/mcp/server.py", ("_MCPServerWithClientSession.connect",))
AGENTS_REMEDY = "connect() and cleanup() must run in the same task"
MCP_CLIENT_DRIVER = "mcp_sdk_client.py"
TOOL_CLIENT = Site(MCP_CLIENT_DRIVER, ("ToolClient.connect",))
SESSION_ENTER = Site("mcp/shared/session.py", ("BaseSession.__aenter__",))
PYTEST_ASYNCIO_REMEDY = "anyio's pytest plugin"
STARLETTE_REMEDY = "do not yield from a StreamingResponse body"
ANYIO_SPIN = "4.14.2"
FIXTURES = Site("test_pytest_asyncio_fixtures.py", ("task_group", "deadline", "http_client", "mcp_session"))
CHILD_MANUAL = Site("anyio_child_scope.py", ("leaky_child_manual",))
CHILD_ASYNCGEN = Site("anyio_child_scope.py", ("leaky_child_asyncgen",))
ANYIO_416 = ("anyio==4.16.0", "trio==0.35.0")
#: The manual child's scope, left open: an orphan warning on any anyio ...
ORPHANED_MANUAL = Reports("orphaned", None, 1, culprit=CHILD_MANUAL, package=APP)
#: ... and from anyio 4.14, either backend, in the way of anyio's per-child scope.
LEAKED_MANUAL = (
    Reports("violation", "not_innermost", 1, culprit=CHILD_MANUAL, package=APP, blocker=CHILD_MANUAL,
            blocker_count=(1,)),
    ORPHANED_MANUAL,
)

#: The pins of each library's time (the colleagues' working freezes, research/repro*).
MCP_130 = ("mcp==1.30.0", "anyio==4.16.0", "pydantic==2.14.4")


def _orphan_attached(result: RunResult) -> list[str]:
    """anyio#1179: the orphan warning is on the skipped test; the teardown failure links it."""
    out = []
    text = result.stdout
    if "test_skipped" not in text or "ScopeTraceWarning" not in text:
        out.append("pytest output has no ScopeTraceWarning on test_skipped")
    if not re.search(r"left open \(orphaned\) during \S*test_skipped \(call\)", text):
        out.append("the teardown failure does not say the scope was orphaned during test_skipped (call)")
    return out


def _orphan_first(result: RunResult) -> list[str]:
    """The child's orphan warning comes first, in the incident of the misnest."""
    orphans = [r for r in result.reports if r.event == "orphaned"]
    misnests = [r for r in result.reports if r.kind == "not_innermost"]
    if orphans and misnests and orphans[0].line > misnests[0].line:
        return ["the orphan warning is written after the misnest it foretells"]
    return []


CASES: tuple[Case, ...] = (
    Case(
        "fastmcp",
        "one fastmcp Client shared by two tasks over streamable HTTP (PrefectHQ/fastmcp#622, fix #635)",
        (
            Run(
                "affected", "fastmcp 2.5.2",
                ("fastmcp==2.5.2", "mcp==1.9.2", "pydantic==2.11.5", "anyio==4.16.0"),
                "fastmcp_shared_client.py",
                reports=(
                    Reports("violation", "wrong_task", 2, cause="sibling_task", culprit=FASTMCP_CLIENT,
                            package=("fastmcp", "2.5.2"), advice="fixed in 2.6.0"),
                    Reports("orphaned", None, 2, culprit=FASTMCP_CLIENT, package=("fastmcp", "2.5.2"),
                            advice="fixed in 2.6.0"),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed", "fastmcp 2.6.0",
                ("fastmcp==2.6.0", "mcp==1.9.2", "pydantic==2.11.5", "anyio==4.16.0"),
                "fastmcp_shared_client.py", app_errors=False,
            ),
            Run(
                "affected", "fastmcp 2.5.2, FastMCPProxy, two requests",
                ("fastmcp==2.5.2", "mcp==1.9.2", "pydantic==2.11.5", "anyio==4.16.0"),
                "fastmcp_shared_client.py", ("--shape", "proxy"),
                reports=(
                    # request A's handler exits its request scope with the
                    # session's scopes still open (then anyio's per-child scope)
                    Reports("violation", "not_innermost", 2, culprit=FASTMCP_CLIENT,
                            package=("fastmcp", "2.5.2"), advice="fixed in 2.6.0", blocker=SESSION_ENTER,
                            blocker_count=(2, 3)),
                    # request B's handler closes the session A's handler entered
                    Reports("violation", "wrong_task", 2, culprit=FASTMCP_CLIENT,
                            package=("fastmcp", "2.5.2"), advice="fixed in 2.6.0"),
                    Reports("orphaned", None, 2, culprit=FASTMCP_CLIENT,
                            package=("fastmcp", "2.5.2"), advice="fixed in 2.6.0"),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed", "fastmcp 2.6.0, FastMCPProxy, two requests",
                ("fastmcp==2.6.0", "mcp==1.9.2", "pydantic==2.11.5", "anyio==4.16.0"),
                "fastmcp_shared_client.py", ("--shape", "proxy"), app_errors=False,
            ),
        ),
    ),
    Case(
        "openai-agents",
        "MCPServerStdio.connect() in one task, cleanup() in another, on mcp<2 (openai/openai-agents-python#2005)",
        (
            Run(
                "affected", "openai-agents 0.24.0 + mcp 1.30.0",
                ("openai-agents==0.24.0", "openai==3.57.0", *MCP_130),
                "openai_agents_split.py",
                reports=(
                    Reports("violation", "wrong_task", 2, cause="opener_finished", culprit=AGENTS_SERVER,
                            package=("openai-agents", "0.24.0"), advice=AGENTS_REMEDY),
                    Reports("orphaned", None, 2, culprit=AGENTS_SERVER, package=("openai-agents", "0.24.0"),
                            advice=AGENTS_REMEDY),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed pattern", "openai-agents 0.24.0 + mcp 1.30.0, MCPServerManager",
                ("openai-agents==0.24.0", "openai==3.57.0", *MCP_130),
                "openai_agents_split.py", ("--shape", "manager"), app_errors=False,
            ),
            Run(
                "fixed", "openai-agents 0.24.0 + mcp 2.3.0",
                ("openai-agents==0.24.0", "openai==3.57.0", "mcp==2.3.0", "anyio==4.16.0", "pydantic==2.14.4"),
                "openai_agents_split.py", app_errors=False,
            ),
        ),
    ),
    Case(
        "mcp-sdk-split",
        "the tutorial MCP client: stdio_client + ClientSession on an AsyncExitStack in connect(), "
        "cleanup() in another task; one cleanup unwinds both scopes (python-sdk#79, #831)",
        (
            Run(
                "affected", "mcp 1.30.0, connect/cleanup in two tasks",
                MCP_130, MCP_CLIENT_DRIVER, ("--shape", "split"),
                reports=(
                    Reports("violation", "wrong_task", 2, cause="opener_finished", culprit=TOOL_CLIENT, package=APP),
                    Reports("orphaned", None, 2, culprit=TOOL_CLIENT, package=APP),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "affected", "mcp 1.30.0, connect in a task-group child",
                MCP_130, MCP_CLIENT_DRIVER, ("--shape", "tg-child"),
                reports=(
                    # anyio >= 4.14: the child's end fails on anyio's per-child
                    # scope; the scope in the way is the session's task group.
                    Reports("violation", "not_innermost", 1, culprit=TOOL_CLIENT, package=APP,
                            blocker=SESSION_ENTER, blocker_count=(2,)),
                    Reports("violation", "wrong_task", 2, culprit=TOOL_CLIENT, package=APP),
                    # the child's early warnings, before anyio refuses its end
                    Reports("orphaned", None, 2, culprit=TOOL_CLIENT, package=APP),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed pattern", "mcp 1.30.0, one owner task",
                MCP_130, MCP_CLIENT_DRIVER, ("--shape", "same-task"), app_errors=False,
            ),
        ),
    ),
    Case(
        "mcp-sdk-out-of-order",
        "two MCP clients connected in one task, the first cleaned up first (python-sdk#577): not_innermost",
        (
            Run(
                "affected", "mcp 1.30.0, first-in-first-out cleanup",
                MCP_130, MCP_CLIENT_DRIVER, ("--shape", "out-of-order"),
                reports=(
                    # first.cleanup() unwinds its session's then its transport's task
                    # group, both under second's: second's session is in the way
                    Reports("violation", "not_innermost", 2, cause="misnested", culprit=TOOL_CLIENT,
                            package=APP, blocker=SESSION_ENTER, blocker_count=(2, 3)),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed pattern", "mcp 1.30.0, reverse-order cleanup",
                MCP_130, MCP_CLIENT_DRIVER, ("--shape", "same-task"), app_errors=False,
            ),
        ),
    ),
    Case(
        "mcp-session-group",
        "ClientSessionGroup with an exit stack of the caller's: sessions closed in child tasks "
        "(python-sdk#915; no fixed release: remedy)",
        (
            Run(
                "affected", "mcp 1.30.0, exit_stack=external",
                MCP_130, "mcp_session_group.py", ("--shape", "external-stack"),
                reports=(
                    # one child task closes the session's stack: its task group,
                    # then stdio_client's; the caller's task is still running
                    Reports("violation", "wrong_task", 2, cause="sibling_task",
                            culprit=Site("mcp/client/session_group.py",
                                         ("ClientSessionGroup._establish_session",
                                          "ClientSessionGroup.connect_to_server",
                                          "ClientSessionGroup.__aexit__")),
                            package=("mcp", "1.30.0"), advice="let the group own its exit stack"),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed pattern", "mcp 1.30.0, the group owns its stack",
                MCP_130, "mcp_session_group.py", ("--shape", "owned"), app_errors=False,
            ),
        ),
    ),
    Case(
        "pytest-asyncio",
        "async fixtures holding a scope across yield under pytest-asyncio, "
        "setup and teardown in two tasks (pytest-dev/pytest-asyncio#1191; remedy)",
        (
            Run(
                "affected", "pytest-asyncio 1.5.0",
                ("pytest-asyncio==1.5.0", "pytest==9.2.0", "httpx==0.28.1", *MCP_130),
                "test_pytest_asyncio_fixtures.py", pytest=True,
                reports=(
                    Reports("violation", "wrong_task", 5, cause="fixture_teardown", culprit=FIXTURES,
                            package=APP, advice=PYTEST_ASYNCIO_REMEDY,
                            fixture=(FIXTURES.functions, "pytest-asyncio")),
                    Reports("orphaned", None, 5, culprit=FIXTURES, package=APP, advice=PYTEST_ASYNCIO_REMEDY),
                ),
                incidents=4,
                pytest_counts={"passed": 5, "error": 4},
                checks=(lambda r: _fixture_names(r, {"task_group", "deadline", "http_client", "mcp_session"}),),
            ),
            Run(
                "fixed pattern", "pytest 9.2.0 + anyio's plugin, same fixtures",
                ("pytest-asyncio==1.5.0", "pytest==9.2.0", "httpx==0.28.1", *MCP_130),
                "test_anyio_plugin_fixtures.py", pytest=True,
                pytest_counts={"passed": 4},
            ),
        ),
    ),
    Case(
        "anyio-1179",
        "anyio 4.14.0's pytest plugin: pytest.skip() leaves a session fixture's task group in a "
        "dead runner task (agronholm/anyio#1179, fixed in 4.14.1)",
        (
            Run(
                "affected", "anyio 4.14.0",
                ("anyio==4.14.0", "pytest==9.2.0"),
                "test_anyio_skip_session_fixture.py", pytest=True,
                reports=(
                    Reports("violation", "wrong_task", 1, cause="fixture_teardown",
                            culprit=Site("anyio/_backends/_asyncio.py", ("TestRunner._run_tests_and_fixtures",),
                                         plumbing_ok=True),
                            package=("anyio", "4.14.0"), advice="fixed in 4.14.1",
                            fixture=("background_service", "anyio")),
                    Reports("orphaned", None, 1,
                            culprit=Site("anyio/_backends/_asyncio.py", ("TestRunner._run_tests_and_fixtures",),
                                         plumbing_ok=True),
                            package=("anyio", "4.14.0"), advice="fixed in 4.14.1"),
                ),
                incidents=1,
                pytest_counts={"passed": 2, "skipped": 1, "error": 1},
                checks=(_orphan_attached,),
            ),
            Run(
                "fixed", "anyio 4.14.1",
                ("anyio==4.14.1", "pytest==9.2.0"),
                "test_anyio_skip_session_fixture.py", pytest=True,
                pytest_counts={"passed": 2, "skipped": 1},
            ),
        ),
    ),
    Case(
        "anyio-child-scope",
        "anyio >= 4.14 per-child scopes: a task-group child ends with its own scope open "
        "(a manual __enter__, an abandoned async generator)",
        (
            Run(
                "affected", "anyio 4.16.0 asyncio, manual __enter__",
                ANYIO_416, "anyio_child_scope.py", ("--scenario", "manual"),
                reports=LEAKED_MANUAL, incidents=1, app_errors=True, checks=(_orphan_first,),
            ),
            Run(
                "affected", "anyio 4.16.0 asyncio, abandoned generator",
                ANYIO_416, "anyio_child_scope.py", ("--scenario", "asyncgen"),
                reports=(
                    Reports("violation", "not_innermost", 1, culprit=CHILD_ASYNCGEN, package=APP,
                            blocker=Site("anyio_child_scope.py", ("ticks",)), blocker_count=(1,)),
                    Reports("violation", "wrong_task", 1, cause="asyncgen_finalizer", culprit=CHILD_ASYNCGEN,
                            package=APP),
                    Reports("orphaned", None, 1, culprit=CHILD_ASYNCGEN, package=APP),
                ),
                incidents=1, app_errors=True, checks=(_orphan_first,),
            ),
            Run(
                "affected", "anyio 4.16.0 trio, manual __enter__",
                ANYIO_416, "anyio_child_scope.py", ("--scenario", "manual", "--backend", "trio"),
                reports=LEAKED_MANUAL, incidents=1, app_errors=True, checks=(_orphan_first,),
            ),
            Run(
                "before 4.14", "anyio 4.13.0 asyncio, manual __enter__",
                ("anyio==4.13.0",), "anyio_child_scope.py", ("--scenario", "manual"),
                reports=(ORPHANED_MANUAL,), incidents=1, app_errors=False,
            ),
            Run(
                "fixed pattern", "anyio 4.16.0 asyncio, with / aclosing",
                ANYIO_416, "anyio_child_scope.py", ("--fixed",), app_errors=False,
            ),
            Run(
                "fixed pattern", "anyio 4.16.0 trio, with / aclosing",
                ANYIO_416, "anyio_child_scope.py", ("--fixed", "--backend", "trio"), app_errors=False,
            ),
        ),
    ),
    Case(
        "starlette-streaming",
        "a StreamingResponse body generator holding move_on_after across yield, abandoned when "
        "uvicorn cancels the request at shutdown (Kludex/starlette#1102; remedy)",
        (
            Run(
                "affected", "starlette 1.10.0 + anyio 4.16.0",
                ("starlette==1.10.0", "uvicorn==0.54.0", "httpx==0.28.1", "anyio==4.16.0"),
                "starlette_streaming.py", app_errors=True,
                reports=(
                    Reports("violation", "not_innermost", 1,
                            culprit=Site("starlette/responses.py", ("StreamingResponse.stream_response",)),
                            package=("starlette", "1.10.0"), advice=STARLETTE_REMEDY,
                            blocker=Site("starlette_streaming.py", ("body_holding_move_on_after",)),
                            blocker_count=(1,)),
                    Reports("violation", "wrong_task", 1, cause="asyncgen_finalizer",
                            culprit=Site("starlette/responses.py", ("StreamingResponse.stream_response",)),
                            package=("starlette", "1.10.0"), advice=STARLETTE_REMEDY),
                    Reports("orphaned", None, 1,
                            culprit=Site("starlette/responses.py", ("StreamingResponse.stream_response",)),
                            package=("starlette", "1.10.0"), advice=STARLETTE_REMEDY),
                ),
                incidents=1,
            ),
            Run(
                "fixed pattern", "starlette 1.10.0, a closing StreamingResponse",
                ("starlette==1.10.0", "uvicorn==0.54.0", "httpx==0.28.1", "anyio==4.16.0"),
                "starlette_streaming.py", ("--variant", "closing"), app_errors=False,
            ),
        ),
    ),
    Case(
        "anyio-cpu-spin",
        "a client's connect()/close() in two tasks; anyio < 4.14.2 then spins in _deliver_cancellation "
        "(agronholm/anyio#1111, fix #1217 in 4.14.2)",
        (
            Run(
                "affected", "anyio 4.14.1",
                ("anyio==4.14.1",), "anyio_cpu_spin.py",
                reports=(
                    Reports("violation", "wrong_task", 1, cause="opener_finished",
                            culprit=Site("anyio_cpu_spin.py", ("Client.connect",)), package=APP,
                            advice=ANYIO_SPIN),
                    # the orphaned scope spins too, once anything cancels it
                    Reports("orphaned", None, 1, culprit=Site("anyio_cpu_spin.py", ("Client.connect",)),
                            package=APP, advice=ANYIO_SPIN),
                ),
                incidents=1, app_errors=True,
                checks=(lambda r: [] if r.app.get("spins") else ["anyio 4.14.1 did not spin"],),
            ),
            Run(
                "fixed", "anyio 4.14.2 (the violation stays: the app's bug; no spin, no advice)",
                ("anyio==4.14.2",), "anyio_cpu_spin.py",
                reports=(
                    Reports("violation", "wrong_task", 1, cause="opener_finished",
                            culprit=Site("anyio_cpu_spin.py", ("Client.connect",)), package=APP, advice=None),
                    Reports("orphaned", None, 1, culprit=Site("anyio_cpu_spin.py", ("Client.connect",)),
                            package=APP, advice=None),
                ),
                incidents=1, app_errors=True,
                checks=(lambda r: ["anyio 4.14.2 spun"] if r.app.get("spins") else [],),
            ),
            Run(
                "fixed pattern", "anyio 4.14.1, one owner task",
                ("anyio==4.14.1",), "anyio_cpu_spin.py", ("--fixed",), app_errors=False,
            ),
        ),
    ),
    Case(
        "agent-framework",
        "MCPStdioTool.connect() in a task, close() in another (microsoft/agent-framework#4678, fix #4687 "
        "in 1.0.0rc5)",
        (
            Run(
                "affected", "agent-framework-core 1.0.0rc4",
                ("agent-framework-core==1.0.0rc4", *MCP_130), "agent_framework_mcp_tool.py",
                reports=(
                    Reports("violation", "wrong_task", 2, cause="opener_finished",
                            culprit=Site("agent_framework/_mcp.py", ("MCPTool.connect",)),
                            package=("agent-framework-core", "1.0.0rc4"), advice="fixed in 1.0.0rc5"),
                    Reports("orphaned", None, 2, culprit=Site("agent_framework/_mcp.py", ("MCPTool.connect",)),
                            package=("agent-framework-core", "1.0.0rc4"), advice="fixed in 1.0.0rc5"),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed", "agent-framework-core 1.0.0rc5",
                ("agent-framework-core==1.0.0rc5", *MCP_130), "agent_framework_mcp_tool.py", app_errors=False,
            ),
        ),
    ),
    Case(
        "langchain-mcp-adapters",
        "a MultiServerMCPClient entered by a startup task and exited by a shutdown task "
        "(langchain-ai/langchain-mcp-adapters#99, fix #146 in 0.1.0)",
        (
            Run(
                "affected", "langchain-mcp-adapters 0.0.11",
                ("langchain-mcp-adapters==0.0.11", "mcp==1.9.2", "pydantic==2.11.5", "anyio==4.16.0"),
                "langchain_mcp_client.py",
                reports=(
                    Reports("violation", "wrong_task", 2, cause="opener_finished",
                            culprit=Site("langchain_mcp_adapters/client.py"),
                            package=("langchain-mcp-adapters", "0.0.11"), advice="fixed in 0.1.0"),
                    Reports("orphaned", None, 2, culprit=Site("langchain_mcp_adapters/client.py"),
                            package=("langchain-mcp-adapters", "0.0.11"), advice="fixed in 0.1.0"),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed", "langchain-mcp-adapters 0.1.0",
                ("langchain-mcp-adapters==0.1.0", "mcp==1.9.2", "pydantic==2.11.5", "anyio==4.16.0"),
                "langchain_mcp_client.py", app_errors=False,
            ),
        ),
    ),
    Case(
        "pydantic-ai",
        "one MCPServerStreamableHTTP shared by two concurrent agent runs (pydantic/pydantic-ai#2355, fix #4514)",
        (
            Run(
                "affected", "pydantic-ai-slim 1.20.0",
                ("pydantic-ai-slim[mcp]==1.20.0", "mcp==1.21.2", "opentelemetry-api==1.38.0",
                 "opentelemetry-sdk==1.38.0", "anyio==4.16.0"),
                "pydantic_ai_shared_server.py",
                reports=(
                    # B, the last to leave, closes the transport's and the
                    # session's task groups A's task entered
                    Reports("violation", "wrong_task", 2, cause="sibling_task", culprit=PAI_SERVER,
                            package=("pydantic-ai-slim", "1.20.0"), advice="fixed in 1.92.0"),
                    # A's graph run exits its own task group with them still open
                    Reports("violation", "not_innermost", 1, culprit=PAI_SERVER,
                            package=("pydantic-ai-slim", "1.20.0"), advice="fixed in 1.92.0",
                            blocker=SESSION_ENTER, blocker_count=(2,)),
                    Reports("orphaned", None, 2, culprit=PAI_SERVER,
                            package=("pydantic-ai-slim", "1.20.0"), advice="fixed in 1.92.0"),
                ),
                incidents=1, app_errors=True,
            ),
            Run(
                "fixed", "pydantic-ai-slim 1.92.0",
                ("pydantic-ai-slim[mcp]==1.92.0", "anyio==4.16.0"),
                "pydantic_ai_shared_server.py", app_errors=False,
            ),
        ),
    ),
)


def _fixture_names(result: RunResult, names: set[str]) -> list[str]:
    got = {r.attrs.get(FIXTURE) for r in result.reports if r.event == "violation"}
    missing = names - got
    return [f"no violation names fixture(s) {sorted(missing)} (got {sorted(map(str, got))})"] if missing else []


# -- venvs and runs ----------------------------------------------------------------------------


class Tools:
    """uv, the scopetrace wheel of this checkout, where venvs go."""

    def __init__(self, root: Path, python: str, keep: bool) -> None:
        self.root = root
        self.python = python
        self.keep = keep
        self.keep_work = False
        self.uv = self._find_uv()
        self.wheel = self._build()
        self.lock = threading.Lock()

    def _find_uv(self) -> str:
        found = shutil.which("uv")
        if found:
            return found
        for candidate in (REPO / "build" / "matrix" / "uv" / "bin" / "uv",
                          self.root / "scopetrace-verify-uv" / "bin" / "uv"):
            if candidate.exists():
                return str(candidate)
        home = self.root / "scopetrace-verify-uv"
        print(f"installing uv into {home}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q", "uv"], check=True)
        return str(home / "bin" / "uv")

    def _build(self) -> Path:
        out = Path(tempfile.mkdtemp(prefix="scopetrace-verify-dist-", dir=self.root))
        t0 = time.monotonic()
        done = subprocess.run(
            [self.uv, "build", "-q", "--python", self.python, "-o", str(out), str(REPO)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"building scopetrace failed:\n{done.stdout}\n{done.stderr}")
        wheels = sorted(out.glob("scopetrace-*.whl"))
        if not wheels:
            raise SystemExit(f"no wheel in {out}")
        print(f"built {wheels[0].name} from {REPO} in {time.monotonic() - t0:.1f}s", flush=True)
        return wheels[0]

    def venv(self, case: str, run: Run) -> Path:
        digest = hashlib.sha1(" ".join(sorted(run.pins)).encode()).hexdigest()[:10]
        venv = self.root / f"vc-{case}-{digest}"
        python = venv / "bin" / "python"
        marker = venv / ".verify-culprits"
        want = " ".join(run.pins)
        if not (marker.exists() and marker.read_text() == want):
            subprocess.run([self.uv, "venv", "-q", "--clear", "--python", self.python, str(venv)],
                           check=True, capture_output=True, text=True)
        done = subprocess.run(
            [self.uv, "pip", "install", "-q", "--python", str(python), "--reinstall-package", "scopetrace",
             str(self.wheel), *run.pins],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"installing {want} failed:\n{done.stderr[-3000:]}")
        marker.write_text(want)
        return venv

    def cleanup(self, venvs: set[Path]) -> None:
        shutil.rmtree(self.wheel.parent, ignore_errors=True)
        if not self.keep:
            for venv in venvs:
                shutil.rmtree(venv, ignore_errors=True)


def _driver_env(jsonl: Path, pytest_run: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SCOPETRACE", "PYTEST", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    # Offline: anything that tries the network goes to a closed local port.
    proxy = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy, http_proxy=proxy, https_proxy=proxy,
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               OPENAI_AGENTS_DISABLE_TRACING="1", OPENAI_API_KEY="sk-offline-not-used",
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    if pytest_run:
        env.update(SCOPETRACE_EXPORTER="jsonl", SCOPETRACE_JSONL_PATH=str(jsonl),
                   SCOPETRACE_STACK_DEPTH="64", SCOPETRACE_RATE_LIMIT="0")
    else:
        env["VERIFY_CULPRITS_JSONL"] = str(jsonl)
    return env


def run_one(tools: Tools, case: Case, run: Run, index: int) -> RunResult:
    result = RunResult(case.name, run)
    t0 = time.monotonic()
    try:
        venv = tools.venv(case.name, run)
    except Exception as exc:
        result.problems.append(f"venv: {exc}")
        result.returncode = -1
        return result
    result.venv = venv
    work = Path(tempfile.mkdtemp(prefix=f"verify-culprits-work-{case.name}-{index}-", dir=tools.root))
    for name in (run.driver, HELPER, *run.extra_files):
        shutil.copy(DRIVERS / name, work / name)
    jsonl = work / "scopetrace.jsonl"
    python = str(venv / "bin" / "python")
    if run.pytest:
        (work / "pytest.ini").write_text("[pytest]\n")
        cmd = [python, "-m", "pytest", "--scopetrace", "-p", "no:cacheprovider", "-rA", "-W",
               "default", run.driver, *run.args]
    else:
        cmd = [python, run.driver, *run.args]
    try:
        done = subprocess.run(cmd, cwd=work, env=_driver_env(jsonl, run.pytest), capture_output=True,
                              text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        result.stdout, result.stderr, result.returncode = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        result.stdout = exc.stdout if isinstance(exc.stdout, str) else ""
        result.problems.append(f"driver timed out after {RUN_TIMEOUT:.0f}s")
        result.returncode = -9
    if run.pytest:
        if result.returncode in (0, 1):  # 1: tests failed, as the affected release should
            result.returncode = 0
    else:
        for line in reversed(result.stdout.splitlines()):
            if line.startswith("RESULT "):
                result.app = json.loads(line[len("RESULT "):])
                break
        else:
            result.problems.append("driver printed no RESULT line")
    result.reports, problems = read_reports(jsonl)
    result.problems += problems
    check(result)
    result.seconds = time.monotonic() - t0
    if result.passed and not tools.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:  # kept for a look: the jsonl file, the driver's output
        (work / "stdout.txt").write_text(result.stdout)
        (work / "stderr.txt").write_text(result.stderr)
        result.work = work
    return result


def run_case(tools: Tools, case: Case, log: Callable[[str], None]) -> list[RunResult]:
    results = []
    for i, run in enumerate(case.runs):
        result = run_one(tools, case, run, i)
        log(f"  {case.name} / {run.label} ({run.release}): {'ok' if result.passed else 'FAILED'} "
            f"in {result.seconds:.1f}s")
        results.append(result)
    return results


# -- output ---------------------------------------------------------------------------------------


def _expected_culprit(run: Run) -> str:
    if run.clean:
        return "(nothing reported)"
    sites = []
    for spec in run.reports or ():
        if spec.culprit is not None and spec.culprit.describe() not in sites:
            sites.append(spec.culprit.describe())
    return "; ".join(sites)


def _expected_package(run: Run) -> str:
    for spec in run.reports or ():
        if spec.package == APP:
            return "(app)"
        if isinstance(spec.package, tuple):
            return " ".join(spec.package)
    return "-"


def _actual(result: RunResult) -> tuple[str, str, str]:
    sites: list[str] = []
    packages: list[str] = []
    advice = []
    for r in result.reports:
        s = _short_site(r.attrs.get(CULPRIT))
        if s not in sites:
            sites.append(s)
        p = f"{r.attrs[PACKAGE]} {r.attrs.get(VERSION)}" if PACKAGE in r.attrs else "(app)"
        if p not in packages:
            packages.append(p)
        advice.append(bool(r.attrs.get(ADVICE)))
    if not result.reports:
        return "(nothing)", "-", "-"
    adv = "yes" if all(advice) else ("no" if not any(advice) else f"{sum(advice)}/{len(advice)}")
    return "; ".join(sites), ", ".join(packages), adv


def print_table(results: list[RunResult]) -> None:
    rows = [("case", "run", "release", "expected culprit", "actual culprit", "package", "advice", "result")]
    for r in results:
        site, package, advice = _actual(r)
        exp_adv = "-"
        if r.run.reports:
            wants = {s.advice is not None for s in r.run.reports}
            exp_adv = "yes" if wants == {True} else ("no" if wants == {False} else "mixed")
        rows.append((
            r.case, r.run.label, r.run.release, _expected_culprit(r.run), site,
            f"{package} (want {_expected_package(r.run)})" if r.reports else package,
            f"{advice} (want {exp_adv})" if r.reports else advice,
            "PASS" if r.passed else "FAIL",
        ))
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(" | ".join(cell[:60].ljust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def print_failures(results: list[RunResult]) -> None:
    for r in results:
        if r.passed:
            continue
        print(f"\n{r.case} / {r.run.label} ({r.run.release}): FAIL"
              + (f" (jsonl and output kept in {r.work})" if r.work else ""))
        for p in r.problems:
            print(f"  - {p}")
        for report, problems in r.failing:
            a = report.attrs
            print(f"  - {report.event} {a.get(KIND) or ''} ({a.get(CAUSE) or '-'}), incident {report.incident}:"
                  f" culprit {_short_site(a.get(CULPRIT))}")
            for p in problems:
                print(f"      {p}")
        if r.returncode not in (0, None) or (r.problems and not r.reports and not r.run.clean):
            tail = (r.stderr or r.stdout)[-1500:]
            print("  driver output (tail):\n    " + tail.replace("\n", "\n    "))


# -- --details: the stacks of failing reports ------------------------------------------------------

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')


@functools.lru_cache(maxsize=256)
def _functions(path: str) -> list[tuple[int, int, str, bool]]:
    """(first line, last line, name, is an async generator) of every function of a file."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            gen = isinstance(node, ast.AsyncFunctionDef) and any(
                isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own_nodes(node))
            out.append((node.lineno, node.end_lineno or node.lineno, node.name, gen))
    return out


def _own_nodes(fn: ast.AST) -> list[ast.AST]:
    nodes, todo = [], list(ast.iter_child_nodes(fn))
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        nodes.append(n)
        todo.extend(ast.iter_child_nodes(n))
    return nodes


def _is_async_gen(path: str, line: int, qualname: str) -> bool:
    name = qualname.rsplit(".", 1)[-1]
    best = None
    for first, last, fname, gen in _functions(path):
        if fname == name and first <= line <= last and (best is None or first > best[0]):
            best = (first, gen)
    return bool(best and best[1])


def stack_lines(stacktrace: str | None) -> list[str]:
    """Non-plumbing frames, innermost last, async generators marked."""
    out = []
    for raw in (stacktrace or "").splitlines():
        m = _FRAME.search(raw)
        if not m:
            continue
        path, line, func = m["file"], int(m["line"]), m["func"]
        if PLUMBING.search(path):
            continue
        gen = " [async generator]" if _is_async_gen(path, line, func) else ""
        out.append(f"{_short(path)}:{line} in {func}{gen}")
    return out


def write_details(results: list[RunResult], path: Path) -> None:
    parts = ["# verify_culprits.py: failing reports\n"]
    for r in results:
        if r.passed:
            continue
        parts.append(f"## {r.case} / {r.run.label} ({r.run.release})\n")
        parts.append(f"driver: `compat/culprits/{r.run.driver} {' '.join(r.run.args)}`; venv {r.venv}\n")
        parts += [f"- {p}" for p in r.problems]
        problems_of = {id(report): problems for report, problems in r.failing}
        # every report of the run when the run itself failed (counts, incidents),
        # else only the failing ones
        shown = r.reports if r.problems else [report for report, _ in r.failing]
        for report in shown:
            problems = problems_of.get(id(report), [])
            a = report.attrs
            parts.append(f"\n### {report.event} {a.get(KIND) or ''} ({a.get(CAUSE) or '-'}), "
                         f"incident {report.incident}, jsonl line {report.line}"
                         f"{'' if problems or not r.failing else ' (passes its own checks)'}\n")
            parts += [f"- {p}" for p in problems]
            parts.append(f"- culprit given: `{_short_site(a.get(CULPRIT))}` ({a.get(REASON)})")
            parts.append(f"- package: {a.get(PACKAGE)} {a.get(VERSION)}; advice: {a.get(ADVICE)!r}")
            parts.append(f"- tasks: entered by {a.get(OPENER_TASK)!r}, exited by {a.get(CLOSER_TASK)!r}")
            if BLOCKER in a:
                parts.append(f"- blocker: `{_short_site(a.get(BLOCKER))}` (count {a.get(BLOCKER_COUNT)})")
            if FIXTURE in a:
                parts.append(f"- fixture: {a.get(FIXTURE)} ({a.get(RUNNER)})")
            for title, key, task in (("entering stack", OPENER_STACK, OPENER_TASK),
                                     ("exiting stack", CLOSER_STACK, CLOSER_TASK),
                                     ("blocker's entering stack", BLOCKER_STACK, None)):
                if key not in a:
                    continue
                who = f" (task {a.get(task)!r})" if task else ""
                parts.append(f"\n{title}{who}, non-plumbing frames, innermost last:\n```")
                parts += stack_lines(a.get(key)) or ["(none)"]
                parts.append("```")
        parts.append("")
    path.write_text("\n".join(parts))


# -- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep-venvs", action="store_true", help="keep the venvs (reused next time)")
    parser.add_argument("--venv-root", type=Path, default=Path(tempfile.gettempdir()),
                        help="where venvs and work directories go (default: the temporary directory)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep every run's work directory (jsonl, output), not only the failing ones'")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--python", default=sys.executable, help="the venvs' interpreter (default: this one)")
    parser.add_argument("--details", type=Path, help="write the stacks of failing reports here (markdown)")
    args = parser.parse_args(argv)

    names = {c.name for c in CASES}
    if args.list:
        for c in CASES:
            print(f"{c.name}: {c.summary}")
            for run in c.runs:
                print(f"    {run.label}: {run.release}  [{run.driver} {' '.join(run.args)}]")
        return 0
    unknown = [n for n in args.case if n not in names]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases: {', '.join(sorted(names))}")
    cases = [c for c in CASES if not args.case or c.name in args.case]

    started = time.monotonic()
    args.venv_root.mkdir(parents=True, exist_ok=True)
    tools = Tools(args.venv_root.resolve(), args.python, args.keep_venvs)
    tools.keep_work = args.keep_work
    lock = threading.Lock()

    def log(text: str) -> None:
        with lock:
            print(text, flush=True)

    results: list[RunResult] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_case, tools, case, log) for case in cases]
            for future in futures:
                results.extend(future.result())
        if args.details:  # while the venvs are there: their sources tell async generators
            write_details(results, args.details)
    finally:
        tools.cleanup({r.venv for r in results if r.venv is not None})

    print()
    print_table(results)
    print_failures(results)
    if args.details:
        print(f"\nstacks of the failing reports: {args.details}")
    failed = [r for r in results if not r.passed]
    setup_failed = any(r.returncode == -1 for r in results)
    print(f"\nverify_culprits: {len(results) - len(failed)} of {len(results)} runs passed, "
          f"{len(failed)} failed, {time.monotonic() - started:.0f}s in all")
    if setup_failed:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
