"""install()/uninstall(): symmetric, idempotent, import-order independent."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import trio
from anyio._backends import _asyncio

import scopetrace
from scopetrace._config import ConfigWarning, Options, resolve
from scopetrace._install import current_runtime

from . import scenarios
from .conftest import Reports

ROOT = Path(__file__).resolve().parent.parent


def _methods() -> tuple[object, ...]:
    return (
        _asyncio.CancelScope.__dict__["__enter__"],
        _asyncio.CancelScope.__dict__["__exit__"],
        trio.CancelScope.__dict__["__enter__"],
        trio.CancelScope.__dict__["_close"],
    )


def test_uninstall_restores_the_original_functions() -> None:
    original = _methods()
    scopetrace.install()
    patched = _methods()
    assert all(p is not o for p, o in zip(patched, original))
    assert scopetrace.is_installed()
    scopetrace.uninstall()
    assert _methods() == original
    assert not scopetrace.is_installed()


def test_double_install_and_uninstall_are_harmless() -> None:
    original = _methods()
    scopetrace.install(exporter="none")
    first = _methods()
    runtime = current_runtime()
    scopetrace.install(exporter="console")  # ignored while installed
    assert _methods() == first and current_runtime() is runtime
    seen = Reports(violations_only=True)
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)
    scenarios.run(scenarios.sibling_gather, ("asyncio", {}))
    assert len(seen) == 1  # wrapped once, reported once
    scopetrace.uninstall()
    scopetrace.uninstall()
    assert _methods() == original


def test_reinstall_after_uninstall_works() -> None:
    for _ in range(3):
        scopetrace.install(exporter="none")
        runtime = current_runtime()
        assert runtime is not None
        seen = Reports(violations_only=True)
        runtime.reporter.listeners.append(seen.add)
        scenarios.run(scenarios.sibling_gather, ("trio", {}))
        assert len(seen) == 1
        scopetrace.uninstall()


@pytest.mark.parametrize("order", ["install-first", "anyio-first"])
def test_import_order_does_not_matter(order: str) -> None:
    backends = "import anyio._backends._asyncio, anyio._backends._trio, trio"
    install = "import scopetrace; scopetrace.install(exporter='none')"
    imports = [install, backends] if order == "install-first" else [backends, install]
    program = "\n".join(imports) + textwrap.dedent(
        """
        from tests import scenarios
        from scopetrace._install import current_runtime
        seen = []
        current_runtime().reporter.listeners.append(seen.append)
        scenarios.run(scenarios.sibling_gather, ("asyncio", {}))
        scenarios.run(scenarios.sibling_gather, ("trio", {}))
        print(sorted(v.backend for v in seen if v.is_violation))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['asyncio', 'trio']"


def test_backend_modules_are_not_imported_by_install() -> None:
    # Patching waits for the application to import a backend.
    program = textwrap.dedent(
        """
        import sys, scopetrace
        scopetrace.install()
        print("trio" in sys.modules, "anyio._backends._asyncio" in sys.modules)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


# -- configuration -------------------------------------------------------------


def test_defaults() -> None:
    assert resolve({}, environ={}) == Options()


def test_environment_and_keywords() -> None:
    env = {"SCOPETRACE_STACK_DEPTH": "4", "SCOPETRACE_EXCEPTION_NOTES": "off"}
    options = resolve({"stack_depth": 8}, environ=env)
    assert options.stack_depth == 8  # the keyword wins
    assert options.exception_notes is False


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("SCOPETRACE_STACK_DEPTH", "lots", "an integer from 0 to 128"),
        ("SCOPETRACE_STACK_DEPTH", "-1", "an integer from 0 to 128"),
        ("SCOPETRACE_EXPORTER", "zipkin", "one of console, jsonl, otlp, none"),
        ("SCOPETRACE_EXCEPTION_NOTES", "maybe", "1/true/yes/on or 0/false/no/off"),
        ("SCOPETRACE_LOG_LEVEL", "loud", "one of debug, info, warning, error, critical"),
    ],
)
def test_bad_value_warns_once_and_uses_default(variable: str, value: str, accepted: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = resolve({}, environ={variable: value})
    assert options == Options()
    (warning,) = caught
    assert warning.category is ConfigWarning
    text = str(warning.message)
    assert variable in text and repr(value) in text and accepted in text


def test_a_keyword_that_is_no_option_is_a_programming_error() -> None:
    """Keywords are the programmer's: a typo raises at once (variables only warn)."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'stack_deph'"):
        scopetrace.install(stack_deph=4, exporter="none")
    assert not scopetrace.is_installed()


@pytest.mark.parametrize(
    ("keyword", "value", "accepted"),
    [("stack_depth", -1, "an integer from 0 to 128"), ("exporter", "zipkin", "one of console"),
     ("rate_limit", float("nan"), "a number from 0 to 1e+09")],
)
def test_a_bad_keyword_value_raises(keyword: str, value: object, accepted: str) -> None:
    with pytest.raises(ValueError, match=re.escape(accepted)):
        scopetrace.install(**{keyword: value})
    assert not scopetrace.is_installed()


def test_post_import_hook_keeps_the_real_loader() -> None:
    # The module a hook fired for must look exactly as if imported normally.
    program = textwrap.dedent(
        """
        import importlib.machinery, sys
        from scopetrace._import_hooks import when_imported
        seen = []
        when_imported("json.tool", seen.append)
        import json.tool
        assert seen == [sys.modules["json.tool"]], seen
        assert isinstance(json.tool.__loader__, importlib.machinery.SourceFileLoader)
        assert json.tool.__spec__.loader is json.tool.__loader__
        late = []
        when_imported("json.tool", late.append)  # already imported: at once
        assert late == [json.tool]
        from scopetrace import _import_hooks
        assert _import_hooks._FINDER not in sys.meta_path  # gone once nothing waits
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
