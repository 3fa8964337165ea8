"""`scopetrace demo` runs both seed bugs and their fixes, as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys

from .scenarios import qualname


def test_demo_reports_bugs_and_not_fixes() -> None:
    exe = shutil.which("scopetrace", path=str(__import__("pathlib").Path(sys.executable).parent))
    command = [exe, "demo"] if exe else [sys.executable, "-m", "scopetrace", "demo"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "all scenarios behaved as expected" in out
    assert "UNEXPECTED" not in out
    # Seed 000 on asyncio: the finalizer task closed the task group.
    assert "wrong_task (asyncgen_finalizer)" in out
    assert "running async_generator_athrow" in out
    # Seed 003 on both backends: a sibling tool call closed the connection's scope.
    per_backend = 2 if sys.version_info >= (3, 11) else 1  # note (3.11+) and report
    assert out.count("wrong_task (sibling_task)") == 2 * per_backend
    assert "not_innermost (misnested)" in out
    # Both anyio messages reach the application.
    assert "Attempted to exit cancel scope in a different task than it was entered in" in out
    assert "isn't the current tasks's current cancel scope" in out
    assert "Cancel scope stack corrupted" in out  # trio's wording
    assert out.count("no report (as expected)") == 4  # each fix, on each backend
    assert "entering stack (most recent call last):" in out
    assert qualname("SharedConnectionBuggy.__aenter__") in out


def test_a_misnest_in_one_task_is_not_called_two_tasks() -> None:
    """Regression: the shared-context-manager culprit said "in different tasks
    ... exited it in the other task" for a misnest whose report names one task
    as both opener and closer (the demo's timeout-block case)."""
    proc = subprocess.run(
        [sys.executable, "-m", "scopetrace", "demo"], capture_output=True, text=True, timeout=120
    )
    blocks = proc.stdout.split("scopetrace: anyio cancel scope violation: ")
    misnests = [b for b in blocks if b.startswith("not_innermost")]
    assert misnests
    for block in misnests:
        reason = block.split("  fix:", 1)[1].split("  error:", 1)[0]
        assert qualname("SharedConnectionBuggy.__aenter__") in reason
        assert "different tasks" not in reason and "other task" not in reason
        assert "while a scope entered after it was still open" in reason
