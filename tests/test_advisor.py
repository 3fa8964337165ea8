"""The known-bug advisor: the shipped table, version ranges, and real violations.

The culprit libraries are not installed here, so each test lays out the real
shape of the culprit under its real file path (``pydantic_ai/mcp.py``, ...)
plus a real ``.dist-info`` that ``importlib.metadata`` reads, and breaks a
scope through it on both backends.  ``test_advisor_pydantic_ai.py`` does the
same against the real pydantic-ai releases.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import anyio
import pytest

import scopetrace
from scopetrace import _advisor, _packages, semconv
from scopetrace._advisor import KnownBug, known_bugs, parse, version_key
from scopetrace._install import current_runtime

from .conftest import Reports

from .scenarios import plain_tasks

#: Seed 003's culprit: the first user opens the transport's scope, the last closes it.
PYDANTIC_AI_MCP = '''
import anyio


class MCPServer:
    def __init__(self):
        self._running_count, self._scope = 0, None

    async def __aenter__(self):
        if self._running_count == 0:
            self._scope = anyio.CancelScope()
            self._scope.__enter__()
        self._running_count += 1
        return self

    async def __aexit__(self, *args):
        self._running_count -= 1
        if self._running_count == 0:
            self._scope.__exit__(None, None, None)
'''

#: Seed 000's culprit: the task group is entered by start() and exited by close().
CLAUDE_QUERY = '''
import anyio


class Query:
    def __init__(self):
        self._tg = None

    async def start(self):
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()

    async def close(self):
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
'''


def _install_fake(root: Path, package: str, module: str, source: str, dist: str, version: str,
                  monkeypatch: pytest.MonkeyPatch) -> Any:
    """Lay out ``root/<package>/<module>.py`` and ``<dist>-<version>.dist-info``."""
    root = root / "site-packages"  # where installers put distributions
    path = root.joinpath(*package.split("/"), module + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    top = package.split("/")[0]
    (info / "RECORD").write_text(f"{package}/{module}.py,,\n{top}/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(root))
    _packages.forget()
    # Imported under a private name: only the file path has to be the real one.
    spec = importlib.util.spec_from_file_location(f"_fake_{dist.replace('-', '_')}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _fresh_versions() -> Any:
    yield
    _packages.forget()


async def _shared_connection(server: Any) -> None:
    """Two plain tasks: A enters first, B joins, A leaves, B closes A's scope."""
    a_in, b_in, a_out = anyio.Event(), anyio.Event(), anyio.Event()

    async def a() -> None:
        async with server:
            a_in.set()
            await b_in.wait()
        a_out.set()

    async def b() -> None:
        await a_in.wait()
        try:
            async with server:
                b_in.set()
                await a_out.wait()
        except RuntimeError:
            pass

    await plain_tasks(a, b)


def _violations() -> list[scopetrace.Report]:
    seen = Reports(violations_only=True)
    runtime = current_runtime()
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)
    return seen


# -- the shipped table ----------------------------------------------------------


def test_shipped_table_is_valid() -> None:
    bugs = {b.name: b for b in known_bugs()}
    assert set(bugs) >= {"pydantic-ai", "claude-agent-sdk", "claude-code-sdk"}
    assert bugs["pydantic-ai"].fixed_in == "1.92.0"
    assert bugs["pydantic-ai"].issue == "pydantic/pydantic-ai#2355"
    assert bugs["claude-agent-sdk"].fixed_in == "0.1.51"
    assert bugs["claude-code-sdk"].fixed_in is None


@pytest.mark.parametrize(
    ("lower", "higher"),
    [("1.9", "1.10"), ("1.20.0", "1.92.0"), ("1.92.0rc1", "1.92.0"), ("1.92.0", "1.92.0.post1"),
     ("0.1.50", "0.1.51"), ("1.91.9", "1.92"), ("1.92.0.dev3", "1.92.0a1")],
)
def test_version_order(lower: str, higher: str) -> None:
    assert version_key(lower) < version_key(higher)


def test_equal_versions() -> None:
    assert version_key("1.92") == version_key("1.92.0") == version_key("v1.92.0")


def test_bad_entries_are_named() -> None:
    good = json.loads(json.dumps({"bugs": [{
        "name": "x", "distributions": ["x"], "fixed_in": "1.0", "stack": "closer",
        "frames": [{"file": "x/y.py", "function": "f"}], "issue": "o/x#1",
    }]}))
    expected = KnownBug("x", ("x",), None, "1.0", "closer", (("x/y.py", "f"),), "o/x#1")
    assert parse(good)[0] == expected
    for broken in ({"stack": "sideways"}, {"fixed_in": "soon"}, {"frames": []}):
        doc = {"bugs": [dict(good["bugs"][0], **broken)]}
        with pytest.raises(ValueError, match="known_bugs.json: entry 0"):
            parse(doc)


# -- real violations through the culprits' real file paths ----------------------


@pytest.mark.parametrize(
    ("version", "advice"),
    [
        ("1.20.0", "pydantic-ai 1.20.0 is affected by pydantic/pydantic-ai#2355, fixed in 1.92.0 "
                   "(pydantic/pydantic-ai#4514): upgrade to pydantic-ai>=1.92.0 (raise your pin or "
                   "floor if you have one)"),
        ("1.92.0", None),
    ],
)
def test_pydantic_ai_shape(
    backend: Any, traced: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, version: str, advice: str | None,
) -> None:
    mod = _install_fake(tmp_path, "pydantic_ai", "mcp", PYDANTIC_AI_MCP, "pydantic-ai-slim",
                        version, monkeypatch)
    seen = _violations()
    name, options = backend
    with caplog.at_level(logging.ERROR, logger=semconv.LOGGER_NAME):
        anyio.run(_shared_connection, mod.MCPServer(), backend=name, backend_options=options)
    assert [v.kind for v in seen] == [semconv.KIND_WRONG_TASK]
    assert seen[0].advice == advice
    span = traced.finished(semconv.VIOLATION_SPAN)[0]
    assert span.attributes.get(semconv.ADVICE) == advice
    assert caplog.records[0].scopetrace.get(semconv.ADVICE) == advice
    if advice:
        assert f"  advice:     {advice}" in seen[0].format().splitlines()
        assert f"  advice:     {advice}" in caplog.records[0].scopetrace_report.splitlines()
    else:
        assert "advice:" not in seen[0].format()


def test_no_advice_when_the_library_is_not_installed(
    traced: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _install_fake(tmp_path, "pydantic_ai", "mcp", PYDANTIC_AI_MCP, "not-pydantic-ai",
                        "1.20.0", monkeypatch)
    seen = _violations()
    anyio.run(_shared_connection, mod.MCPServer())
    assert len(seen) == 1 and seen[0].advice is None


@pytest.mark.parametrize(
    ("package", "dist", "version", "advice"),
    [
        ("claude_agent_sdk/_internal", "claude-agent-sdk", "0.1.50",
         "claude-agent-sdk 0.1.50 is affected by anthropics/claude-agent-sdk-python#454, fixed in "
         "0.1.51 (anthropics/claude-agent-sdk-python#746): upgrade to claude-agent-sdk>=0.1.51 "
         "(raise your pin or floor if you have one)"),
        ("claude_agent_sdk/_internal", "claude-agent-sdk", "0.1.51", None),
        ("claude_code_sdk/_internal", "claude-code-sdk", "0.0.25",
         "claude-code-sdk 0.0.25 is affected by anthropics/claude-agent-sdk-python#454; no fixed "
         "release: the package was renamed and only its successor has the fix: move to "
         "claude-agent-sdk>=0.1.51"),
    ],
)
def test_claude_sdk_shape(
    backend: Any, traced: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    package: str, dist: str, version: str, advice: str | None,
) -> None:
    if backend[0] == "trio":
        pytest.skip("trio fails the opener when it ends inside its nursery: no closer ever runs")
    mod = _install_fake(tmp_path, package, "query", CLAUDE_QUERY, dist, version, monkeypatch)
    seen = _violations()

    async def main() -> None:
        query = mod.Query()
        started = anyio.Event()

        async def opener() -> None:
            await query.start()
            started.set()

        async def closer() -> None:
            await started.wait()
            try:
                await query.close()
            except RuntimeError:
                pass

        await plain_tasks(opener, closer)

    name, options = backend
    anyio.run(main, backend=name, backend_options=options)
    assert seen and seen[0].kind == semconv.KIND_WRONG_TASK
    assert seen[0].advice == _and_anyio_spin(advice)


def _and_anyio_spin(advice: str | None) -> str | None:
    """The advice when the opener ended inside the scope: below anyio 4.14.2
    (the matrix's lowest cells) the known-bug table adds the event-loop spin
    that such a scope causes there (agronholm/anyio#1111)."""
    installed = _packages.version_of(("anyio",))
    if installed is None or version_key(installed) >= version_key("4.14.2"):
        return advice
    spin = (
        f"anyio {installed} is affected by agronholm/anyio#1111, fixed in 4.14.2 "
        "(agronholm/anyio#1217): raise the anyio floor to >=4.14.2: older releases can spin "
        "the event loop at 100% CPU in CancelScope._deliver_cancellation after this violation "
        "(a finished task left in the scope); fixing the culprit above removes the cause"
    )
    return f"{advice}; also: {spin}" if advice else spin


@pytest.mark.slow
def test_data_file_is_in_the_wheel(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True, env={**__import__("os").environ, "SCOPETRACE_NO_EXTENSIONS": "1"},
    )
    (wheel,) = tmp_path.glob("scopetrace-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "scopetrace/known_bugs.json" in names
        assert json.loads(zf.read("scopetrace/known_bugs.json"))["bugs"]
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "scopetrace = scopetrace._pytest_plugin" in zf.read(entry_points).decode()
