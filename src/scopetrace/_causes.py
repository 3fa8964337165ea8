"""Causes: what most likely happened, decided from the two tasks, and the fix in words.

The texts are constants so that every output (console, log, note, jsonl,
``scopetrace report``) says the same thing, and tests can hold them.
"""

from __future__ import annotations

from . import semconv

EXPLANATIONS: dict[str, str] = {
    semconv.CAUSE_ASYNCGEN_FINALIZER: (
        "an async generator that entered the scope was closed by the event loop's "
        "async-generator finalizer (aclose()/athrow in a task of its own), not by the "
        "task that iterated it; close it explicitly (contextlib.aclosing) in the "
        "owning task, or keep task groups out of async generators"
    ),
    semconv.CAUSE_SIBLING_TASK: (
        "another task sharing the resource (a sibling in the same gather()/task group, "
        "or any concurrent task) closed the scope its opener entered; give the scope a "
        "dedicated owner task that both enters and exits it"
    ),
    semconv.CAUSE_OPENER_FINISHED: (
        "the task that entered the scope had already finished, leaving the scope open "
        "for a later task to close; enter and exit the scope in one task (e.g. an "
        "owner task or a lifespan), never in separate setup/teardown tasks"
    ),
    semconv.CAUSE_FIXTURE_TEARDOWN: (
        "an async fixture held the scope across its yield, and the test runner ran its "
        "setup and its teardown in different tasks; run both in one task (pytest-asyncio: "
        "give the fixture and its tests one loop_scope; anyio's plugin runs them in one "
        "task), or open the scope inside the test instead of the fixture"
    ),
    semconv.CAUSE_MISNESTED: (
        "the task exited this scope while a scope it entered later was still open; "
        "exit scopes in the reverse order they were entered (async with blocks, not "
        "manual __aenter__/__aexit__ calls)"
    ),
    # Misnested with the scope in the way known: the user may well have written
    # only `async with`; what matters is who left the inner scope open.
    "misnested_blocked": (
        "a scope entered later in this task was still open when this one was exited "
        "(see 'in the way'): something left it open -- an async generator abandoned "
        "inside it, a client or session whose own task group another task failed to "
        "close, a manual __enter__() without __exit__(); close that one first, in this task"
    ),
}

ORPHAN_EXPLANATION = (
    "the task ended without exiting this scope: it leaks, or another task will exit it "
    "and anyio will refuse; enter and exit a scope in one task"
)


def classify(
    kind: str,
    closer_is_finalizer: bool,
    opener_running: bool | None,
    siblings: bool,
    fixture: bool = False,
) -> str:
    """Map what is known about both tasks to a cause (see the causes table in docs/)."""
    if kind == semconv.KIND_NOT_INNERMOST:
        return semconv.CAUSE_MISNESTED
    if closer_is_finalizer:
        return semconv.CAUSE_ASYNCGEN_FINALIZER
    if fixture:
        return semconv.CAUSE_FIXTURE_TEARDOWN
    if siblings or opener_running:
        return semconv.CAUSE_SIBLING_TASK
    return semconv.CAUSE_OPENER_FINISHED
