"""pytest plugin: fail the test during which a cancel scope violation happened.

Enabled by ``pytest --scopetrace`` or the ini option ``scopetrace = true``;
otherwise it only adds its options (pytest loads it through the ``pytest11``
entry point for everyone who has scopetrace installed, so this module imports
nothing of scopetrace until it is enabled).

Applications often swallow the error (``gather(..., return_exceptions=True)``,
a background task whose exception is never retrieved, ``except Exception``);
the plugin hears every report from the reporter itself, so the test that ran
the code fails with the full report even then.

* A violation fails the test phase (setup, call, teardown) it happened in;
  ``--scopetrace-warn`` (ini ``scopetrace_warn = true``) turns failures into
  warnings, and ``@pytest.mark.scopetrace_allow`` exempts a test.
* An orphan warning (a task ended with a scope open: a fixture's scope left in
  a dead runner task, anyio#1179) becomes a warning on the test during which
  it fired; the later violation of the same scope -- often in another test's
  teardown -- says where it began.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Generator
from typing import Any

import pytest

# With SCOPETRACE=1 scopetrace was installed at start-up, and pytest has since
# put its assertion-rewriting import hook in front of scopetrace's: it would
# load anyio's backends itself (anyio ships a pytest plugin), unpatched.
if "scopetrace._import_hooks" in sys.modules:
    sys.modules["scopetrace._import_hooks"].put_first()

_PHASES = ("setup", "call", "teardown")


class ScopeTraceWarning(UserWarning):
    """A cancel scope violation or orphaned scope during a test."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scopetrace", "anyio cancel scope tracing (scopetrace)")
    group.addoption(
        "--scopetrace",
        action="store_true",
        default=None,
        help="trace anyio cancel scopes; a test during which a violation happens fails",
    )
    group.addoption(
        "--scopetrace-warn",
        action="store_true",
        default=None,
        help="with --scopetrace: warn about violations instead of failing the test",
    )
    parser.addini(
        "scopetrace", "enable the scopetrace plugin (as --scopetrace)", type="bool", default=False
    )
    parser.addini(
        "scopetrace_warn",
        "warn instead of failing (as --scopetrace-warn)",
        type="bool",
        default=False,
    )


def _flag(config: pytest.Config, name: str) -> bool:
    """The command-line flag if given, else the ini option of the same name."""
    value = config.getoption(name, default=None)
    return bool(value) if value is not None else bool(config.getini(name))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "scopetrace_allow: cancel scope violations during this test are expected "
        "(the scopetrace plugin neither fails nor warns)",
    )
    if _flag(config, "scopetrace"):
        config.pluginmanager.register(
            _Tracer(warn=_flag(config, "scopetrace_warn")), "scopetrace-tracer"
        )


class _Tracer:
    """Installs scopetrace for the session and pins reports on tests."""

    def __init__(self, warn: bool) -> None:
        self.warn = warn
        self._lock = threading.Lock()
        self._pending: list[Any] = []  # reports since the last phase ended
        self.outside: list[Any] = []  # violations outside any test phase
        self.failed: dict[str, int] = {}  # nodeid -> violations pinned on it
        #: incident id -> "nodeid (phase)" where its orphan warning fired
        self._orphaned_in: dict[str, str] = {}
        self._installed_here = False

    # -- subscription --------------------------------------------------------
    def _listen(self, report: Any) -> None:
        with self._lock:
            self._pending.append(report)

    def _attach(self) -> None:
        """Make sure scopetrace is installed and we hear its reporter.

        Re-checked before every test: a test may uninstall and reinstall
        scopetrace, which makes a new reporter.
        """
        from ._config import env_name
        from ._install import current_runtime, install

        runtime = current_runtime()
        if runtime is None:
            options = {}
            # The failure carries the full report: no copy on stderr as well,
            # unless the user chose an exporter.
            if env_name("exporter") not in os.environ:
                options["exporter"] = "none"
            install(**options)
            self._installed_here = True
            runtime = current_runtime()
        if runtime is not None and self._listen not in runtime.reporter.listeners:
            runtime.reporter.listeners.append(self._listen)

    def _take(self) -> list[Any]:
        from ._install import flush

        flush()  # reports are delivered on a background thread: wait for them
        with self._lock:
            taken, self._pending = self._pending, []
        return taken

    # -- hooks -----------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._attach()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.outside.extend(r for r in self._take() if r.is_violation)
        self._attach()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        if call.when not in _PHASES:
            return
        taken = self._take()
        if not taken or item.get_closest_marker("scopetrace_allow") is not None:
            return
        where = f"{item.nodeid} ({call.when})"
        violations = [r for r in taken if r.is_violation]
        # An orphan warning whose violation came in the same phase is told by
        # the violation's report; the others warn on this test.
        told = {v.incident_id for v in violations}
        orphans = [r for r in taken if not r.is_violation and r.incident_id not in told]
        for orphan in orphans:
            self._orphaned_in.setdefault(orphan.incident_id, where)
            item.warn(ScopeTraceWarning(_render_orphan(orphan)))
        if not violations:
            return
        text = _render(violations, call.when, self._orphaned_in)
        self.failed[item.nodeid] = self.failed.get(item.nodeid, 0) + len(violations)
        if self.warn:
            item.warn(ScopeTraceWarning(text))
        elif report.passed:
            report.outcome = "failed"
            report.longrepr = text
        else:
            report.sections.append((f"scopetrace violations ({call.when})", text))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.outside.extend(r for r in self._take() if r.is_violation)
        if not self.failed and not self.outside:
            return
        terminalreporter.section("scopetrace")
        verb = "warned" if self.warn else "failed"
        for nodeid, count in self.failed.items():
            terminalreporter.line(f"{nodeid}: {count} cancel scope violation(s), {verb}")
        if self.outside:
            terminalreporter.line(
                f"{len(self.outside)} violation(s) outside any test:\n"
                + _render(self.outside, "outside tests", self._orphaned_in)
            )

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._installed_here:
            from ._install import uninstall

            with warnings.catch_warnings():
                uninstall()


def _render_orphan(report: Any) -> str:
    return (
        "scopetrace: a task ended with a cancel scope still open during this test "
        f"(incident {report.incident_id}); anyio will refuse whoever exits it later\n"
        + str(report.format())
    )


def _render(violations: list[Any], when: str, orphaned_in: dict[str, str]) -> str:
    head = (
        f"scopetrace: {len(violations)} anyio cancel scope violation(s) during {when}"
        " (reported even if the code under test swallowed the error)"
    )
    blocks = []
    for violation in violations:
        began = orphaned_in.get(violation.incident_id)
        block = violation.format()
        if began is not None:
            block = (
                f"  this scope was left open (orphaned) during {began}: the failure began there\n"
                + block
            )
        blocks.append(block)
    return "\n\n".join([head, *blocks])
