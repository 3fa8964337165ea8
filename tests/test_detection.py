"""Each kind and cause, on every backend, with what the report says."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import scopetrace
from scopetrace import Report, semconv
from scopetrace._install import current_runtime

from .conftest import Reports

from . import scenarios


@pytest.fixture
def violations() -> list[Report]:
    """Install tracing (no exporter output) and collect every violation."""
    scopetrace.install(exporter="none")
    seen = Reports(violations_only=True)
    runtime = current_runtime()
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)
    return seen


def in_function(site: str, name: str) -> bool:
    """Whether a ``path:line in function`` site is in a function called ``name``."""
    return site.rsplit(" in ", 1)[-1].rsplit(".", 1)[-1] == name


def _only(seen: list[Report]) -> Report:
    assert len(seen) == 1, [v.summary() for v in seen]
    return seen[0]


def test_sibling_gather(backend: Any, violations: list[Report]) -> None:
    caught, outcome = scenarios.run(scenarios.sibling_gather, backend)
    assert outcome is None
    assert len(caught) == 1
    v = _only(violations)
    assert (v.kind, v.cause) == (semconv.KIND_WRONG_TASK, semconv.CAUSE_SIBLING_TASK)
    assert v.backend == ("trio" if backend[0] == "trio" else "asyncio")
    assert v.opener.id != v.closer.id
    assert v.opener.running is False  # call 0 finished before call 3 closed
    assert scenarios.qualname("RefCounted.__aenter__") in v.opener.site
    assert scenarios.qualname("RefCounted.__aexit__") in v.closer.site
    assert v.opener.site.startswith(scenarios.__file__)
    assert "in " + scenarios.qualname("RefCounted.__aenter__") in v.opener.stacktrace
    # the tool call that entered
    assert scenarios.qualname("call.<locals>.run") in v.opener.stacktrace
    assert v.message == str(caught[0])


def test_sibling_still_running(backend: Any, violations: list[Report]) -> None:
    caught, outcome = scenarios.run(scenarios.sibling_running, backend)
    assert len(caught) == 1
    v = _only(violations)
    assert (v.kind, v.cause) == (semconv.KIND_WRONG_TASK, semconv.CAUSE_SIBLING_TASK)
    assert v.opener.running is True
    assert in_function(v.opener.site, "opener") and in_function(v.closer.site, "closer")


def test_opener_finished(backend: Any, violations: list[Report]) -> None:
    caught, outcome = scenarios.run(scenarios.opener_finished, backend)
    assert len(caught) == 1
    v = _only(violations)
    assert (v.kind, v.cause) == (semconv.KIND_WRONG_TASK, semconv.CAUSE_OPENER_FINISHED)
    assert v.opener.running is False
    assert in_function(v.opener.site, "opener") and in_function(v.closer.site, "closer")


def test_task_group_exited_by_other_task(backend: Any, violations: list[Report]) -> None:
    caught, outcome = scenarios.run(scenarios.task_group_other_task, backend)
    assert caught, "anyio must still raise"
    v = violations[0]
    assert v.kind == semconv.KIND_WRONG_TASK
    assert in_function(v.opener.site, "opener") and in_function(v.closer.site, "closer")
    assert "__aenter__" in v.opener.stacktrace  # the task group's own frame


def test_asyncgen_finalizer(backend: Any, violations: list[Report]) -> None:
    if backend[0] == "trio":
        pytest.skip("trio reports this itself at task exit (Nursery stack corrupted)")
    caught, outcome = scenarios.run(scenarios.asyncgen_finalizer, backend)
    assert len(caught) == 1  # "Task exception was never retrieved"
    v = _only(violations)
    assert (v.kind, v.cause) == (semconv.KIND_WRONG_TASK, semconv.CAUSE_ASYNCGEN_FINALIZER)
    assert v.closer.coroutine == "async_generator_athrow"
    if not backend[1].get("loop_factory"):
        # (A task the eager factory ran to completion has no coroutine left to
        # name, and its stack runs on into its parent's: there is no telling.)
        assert v.opener.coroutine.endswith("consume")
    assert in_function(v.opener.site, "query")


def test_misnested(backend: Any, violations: list[Report]) -> None:
    caught, outcome = scenarios.run(scenarios.misnested, backend)
    assert len(caught) == 1
    v = _only(violations)
    assert (v.kind, v.cause) == (semconv.KIND_NOT_INNERMOST, semconv.CAUSE_MISNESTED)
    assert v.opener.id == v.closer.id
    assert v.opener.running is True


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need 3.11")
def test_note_names_both_tasks(backend: Any, violations: list[Report]) -> None:
    caught, _ = scenarios.run(scenarios.sibling_gather, backend)
    (note,) = caught[0].__notes__
    v = violations[0]
    assert note.startswith("scopetrace: wrong_task (sibling_task)")
    assert repr(v.opener.name) in note and repr(v.closer.name) in note
    assert v.opener.site in note


def test_notes_can_be_turned_off(backend: Any) -> None:
    scopetrace.install(exporter="none", exception_notes=False)
    caught, _ = scenarios.run(scenarios.sibling_gather, backend)
    assert not getattr(caught[0], "__notes__", None)


def test_report_text(backend: Any, violations: list[Report]) -> None:
    scenarios.run(scenarios.sibling_gather, backend)
    text = _only(violations).format()
    assert "wrong_task (sibling_task)" in text
    assert "entering stack (most recent call last):" in text
    assert "exiting stack (most recent call last):" in text
    assert "likely cause: another task sharing the resource" in text


def test_stack_depth_zero_still_reports(backend: Any) -> None:
    scopetrace.install(exporter="none", stack_depth=0)
    seen = Reports(violations_only=True)
    runtime = current_runtime()
    assert runtime is not None
    runtime.reporter.listeners.append(seen.add)
    scenarios.run(scenarios.sibling_gather, backend)
    v = _only(seen)
    assert v.opener.stacktrace == "" and v.opener.site == "<not recorded>"
    assert scenarios.qualname("RefCounted.__aexit__") in v.closer.site
