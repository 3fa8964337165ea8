"""pytest plugin for the anyio compatibility run (loaded with ``-p scopetrace_compat_plugin``).

It does the same in the plain and in the traced run, so that the two runs
differ only by ``scopetrace.install()``:

* ``--compat-install``: install scopetrace before any conftest or test module
  is imported, and check at the end that the hooks really were in place (a
  run whose patching silently failed would compare nothing);
* ``--compat-deselect FILE``: drop the tests named in FILE (a JSON list of node
  ids without their ``[params]``): exact names, never prefixes, so that
  ``test_getaddrinfo`` does not also drop ``test_getaddrinfo_ipv6addr``;
* ``--compat-select FILE``: keep only the tests whose full node ids FILE lists
  (the script's reruns);
* ``--compat-out FILE``: write what scopetrace saw as JSON at the end, and
  every test's outcome (with the first line of its error) to ``FILE.jsonl`` as
  it happens, so that a run that crashes still says how far it got.

Both runs also collect garbage only between tests: automatic collection is
off, and after each test's teardown the youngest generation -- everything the
test allocated -- is collected (a full collection, 100+ ms here, runs every
``_FULL_GC_EVERY`` tests).  Several of anyio's tests leak sockets in reference
cycles when this machine's network makes them fail, and an unclosed socket's
ResourceWarning fails whichever test is running when the collector happens to
free it.  When that happens depends on how many objects were allocated, which
tracing changes, so without this the two runs blame different tests for the
same leak.  Collecting at test boundaries blames the test that leaked, in
both runs alike.  (anyio's tests that check for reference cycles call
``gc.collect()`` themselves and are unaffected.)

It works with pytest-xdist: outcomes arrive at the controller as reports, and
each worker hands what it saw to the controller through ``workeroutput``.
"""

from __future__ import annotations

import gc
import json
import sys
from collections import Counter
from typing import Any

import pytest

_outcomes: dict[str, str] = {}
_messages: dict[str, str] = {}
_stream: list[Any] = []  # the open FILE.jsonl, on the process that writes it
_FULL_GC_EVERY = 256
_tests_done = [0]
_deselected: list[str] = []
_violations: Counter[str] = Counter()
_workers: list[dict[str, Any]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scopetrace-compat")
    group.addoption("--compat-install", action="store_true", help="run with scopetrace installed")
    group.addoption("--compat-deselect", metavar="FILE", help="JSON list of test names to drop")
    group.addoption("--compat-select", metavar="FILE", help="JSON list of node ids to keep")
    group.addoption("--compat-out", metavar="FILE", help="write per-test outcomes here")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Runs before the first conftest is imported: the nearest pytest gets to
    # "installed at interpreter start" without a .pth or sitecustomize.
    if not early_config.known_args_namespace.compat_install:
        return
    import scopetrace
    from scopetrace._install import current_runtime

    scopetrace.install()
    runtime = current_runtime()
    if runtime is not None and runtime.reporter is not None:
        # Kind and cause only: keeping the Violation would keep its exception
        # (and so frames) alive for the rest of the session.
        runtime.reporter.listeners.append(
            lambda v: _violations.update([f"{v.backend} {v.kind} {v.cause}"])
        )


def _load(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return set(json.load(f))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselect_path = config.getoption("compat_deselect")
    select_path = config.getoption("compat_select")
    names = _load(deselect_path) if deselect_path else set()
    only = _load(select_path) if select_path else None
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        dropped = item.nodeid.split("[", 1)[0] in names
        if only is not None and item.nodeid not in only:
            dropped = True
        elif dropped:
            _deselected.append(item.nodeid)
        (drop if dropped else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    gc.disable()
    path = config.getoption("compat_out")
    if path and not hasattr(config, "workerinput"):  # xdist workers send reports instead
        _stream.append(open(path + ".jsonl", "w", encoding="utf-8"))  # noqa: SIM115


def pytest_unconfigure(config: pytest.Config) -> None:
    while _stream:
        _stream.pop().close()
    gc.enable()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    # After the fixtures' teardown (a plain hook), before pytest's unraisable-
    # exception check (also trylast, but registered earlier, so called later).
    _tests_done[0] += 1
    gc.collect(2 if _tests_done[0] % _FULL_GC_EVERY == 0 else 0)


def _write(line: dict[str, str]) -> None:
    if _stream:
        _stream[0].write(json.dumps(line) + "\n")
        _stream[0].flush()


def pytest_runtest_logstart(nodeid: str) -> None:
    _write({"start": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome = _phase_outcome(report)
    if outcome is None:
        return
    previous = _outcomes.get(report.nodeid)
    if previous is None:
        _outcomes[report.nodeid] = outcome
    elif report.when == "teardown":
        _outcomes[report.nodeid] = f"{previous}+teardown-error"
    if report.failed and report.nodeid not in _messages:
        _messages[report.nodeid] = _first_line(report)
    line = {"test": report.nodeid, "outcome": _outcomes[report.nodeid]}
    if report.nodeid in _messages:
        line["message"] = _messages[report.nodeid]
    _write(line)


def _phase_outcome(report: pytest.TestReport) -> str | None:
    """One word per test: the call's outcome, or the phase that stopped it."""
    if hasattr(report, "wasxfail"):
        return "xpassed" if report.passed else "xfailed"
    if report.when == "call":
        return report.outcome
    if report.when not in ("setup", "teardown"):
        return "crashed"  # xdist's report for a test whose worker died
    if report.failed:
        return "error" if report.when == "setup" else "teardown-error"
    if report.skipped:
        return "skipped"
    return None


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = (crash.message if crash is not None else str(report.longrepr)).strip()
    return text.splitlines()[0][:300] if text else ""


def _is_ours(func: Any) -> bool:
    # functools.wraps copies __module__ and __qualname__ from anyio's method,
    # so look at where the code of each layer of wrapping was defined, or,
    # for the C hooks (no code object), at the type of the wrapper.
    import scopetrace

    package = scopetrace.__file__.rsplit("__init__", 1)[0]
    for _ in range(5):
        if type(func).__module__ == "scopetrace._speedups":
            return True
        code = getattr(func, "__code__", None)
        if code is not None and code.co_filename.startswith(package):
            return True
        func = getattr(func, "__wrapped__", None)
        if func is None:
            break
    return False


def _hooks_in_place() -> dict[str, bool]:
    """For each backend this process imported: are its scope methods our wrappers?"""
    found = {}
    targets = (
        ("anyio._backends._asyncio", ("__enter__", "__exit__")),
        ("trio", ("__enter__", "_close")),
    )
    for module_name, methods in targets:
        module = sys.modules.get(module_name)
        if module is not None:
            cls = module.CancelScope
            found[module_name] = all(_is_ours(cls.__dict__.get(m)) for m in methods)
    return found


def _what_this_process_saw(installed: bool) -> dict[str, Any]:
    seen: dict[str, Any] = {"deselected": list(_deselected)}
    if installed:
        from scopetrace._install import current_runtime

        runtime = current_runtime()
        seen["hooks"] = _hooks_in_place()
        seen["still_installed"] = runtime is not None
        seen["internal_errors"] = runtime.internal_errors if runtime is not None else 0
        seen["violations"] = dict(_violations)
    return seen


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without xdist
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: keep what a finished worker saw."""
    text = getattr(node, "workeroutput", {}).get("scopetrace_compat")
    if text:
        _workers.append(json.loads(text))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    installed = bool(config.getoption("compat_install"))
    seen = _what_this_process_saw(installed)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the file
        workeroutput["scopetrace_compat"] = json.dumps(seen)
        return
    path = config.getoption("compat_out")
    if not path:
        return
    processes = [seen, *_workers]
    result: dict[str, Any] = {
        "installed": installed,
        "deselected": sorted({n for p in processes for n in p["deselected"]}),
    }
    if installed:
        hooks: dict[str, bool] = {}
        violations: Counter[str] = Counter()
        for p in processes:
            for module_name, ok in p["hooks"].items():
                hooks[module_name] = hooks.get(module_name, True) and ok
            violations.update(p["violations"])
        result["hooks"] = hooks
        result["still_installed"] = all(p["still_installed"] for p in processes)
        result["internal_errors"] = sum(p["internal_errors"] for p in processes)
        result["violations"] = dict(violations)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, sort_keys=True)
