"""The overhead benchmark runs, and prints its machine-readable last line.

Never asserts timings: the figures depend on the machine.  It checks that
every workload, mode and report of ``benchmarks/overhead.py --quick`` runs to
the end and yields a finite, positive ratio, and (slow) that the
instruction-count method counts what it claims to.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "overhead.py")


def _last_line_keys() -> tuple[str, ...]:
    sys.path.insert(0, BENCHMARKS)
    try:
        import overhead

        return tuple(overhead.LAST_LINE_KEYS)
    finally:
        sys.path.remove(BENCHMARKS)


KEYS = _last_line_keys()
LAST_LINE = re.compile(" ".join(rf"{key}=(\S+)" for key in KEYS) + "$")


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPETRACE")}
    return subprocess.run(
        [sys.executable, SCRIPT, "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_quick_run_ends_with_every_ratio(quick_run: subprocess.CompletedProcess[str]) -> None:
    assert quick_run.returncode == 0, quick_run.stderr[-5000:]
    last = quick_run.stdout.rstrip("\n").splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match is not None, f"last line not in the documented format: {last!r}"
    for key, text in zip(KEYS, match.groups()):
        value = float(text)
        assert math.isfinite(value) and value > 0, f"{key}={text}"


def test_quick_run_reports_what_it_measured(
    quick_run: subprocess.CompletedProcess[str],
) -> None:
    from scopetrace import _record as _capture

    out = quick_run.stdout
    expected = "C accelerator" if _capture.ACCELERATED else "pure Python"
    assert f"capture:  {expected}" in out
    for workload in ("micro_pair", "move_on_after", "taskgroup", "echo", "realistic"):
        assert re.search(rf"^{workload}\s", out, re.MULTILINE), workload
    assert "Cost of each setting" in out and "Memory, realistic service" in out
    # The storm line counts the spans the violations exported: at least one.
    storm = re.search(r"storm: (\d+) violations .* (\d+) spans exported", out)
    assert storm is not None and 0 < int(storm.group(2)) <= int(storm.group(1))


@pytest.fixture
def measure_module() -> Iterator[object]:
    sys.path.insert(0, BENCHMARKS)
    try:
        import _measure

        yield _measure
    finally:
        sys.path.remove(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_price_the_tracer(measure_module: object) -> None:
    """callgrind counts only the measured run, and tracing shows up in it."""
    _measure = measure_module
    jobs = [
        _measure.Job("micro_pair", "plain", 100),  # type: ignore[attr-defined]
        _measure.Job("micro_pair", "traced", 100),  # type: ignore[attr-defined]
        _measure.Job("micro_pair", "naive", 100),  # type: ignore[attr-defined]
    ]
    counts = _measure.instructions_per_unit(jobs, os.cpu_count() or 1)  # type: ignore[attr-defined]
    plain, traced, naive = (counts[job].per_unit for job in jobs)
    # A scope pair is thousands of instructions, not the millions of start-up
    # that the toggle keeps out; recording the stack costs something, and the
    # naive tracer's extract_stack() far more.
    assert 5_000 < plain < 200_000
    assert plain < traced < naive


def test_per_interpreter_table_flags_what_is_over_budget() -> None:
    """``overhead.py --interpreters``: the last line of each interpreter's
    counts-only run becomes a row, over-budget ratios say so, and --check
    counts them (the numbers are made up; the table is not)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        import interpreters
        import overhead
    finally:
        sys.path.remove(BENCHMARKS)
    line = (
        "interpreter=3.14.10 gil=1 free_threaded=0 recorder=C "
        "enter_hook=scopetrace._speedups.ScopeHook anyio=4.16.0 "
        + " ".join(
            f"{w}_ratio={r} {w}_plain=1000 {w}_traced={int(1000 * float(r))}"
            for w, r in zip(overhead.COUNTED_BUDGET, ("1.10", "1.04", "1.06", "1.019"))
        )
        + " memory_ratio=1.03 memory_rss_ratio=1.03 memory_load_ratio=1.01"
    )
    outcome = interpreters.Outcome(interpreters.Interpreter("3.14", "/usr/bin/python3.14"))
    outcome.fields = dict(token.split("=", 1) for token in line.split())
    budget = {f"{w}_ratio": overhead.BUDGET[f"{w}_ratio"] for w in overhead.COUNTED_BUDGET}
    budget["memory_ratio"] = overhead.BUDGET["memory_ratio"]
    assert interpreters.over(outcome, budget) == ["echo_ratio"]
    text = "\n".join(interpreters.report([outcome], [], budget, overhead.COUNTED_BUDGET))
    row = next(r for r in text.splitlines() if r.startswith("3.14.10 "))
    assert "x1.060 OVER" in row and "x1.019 ok" in row and "ScopeHook" in row
    assert "x1.030 ok" in text  # the memory table
    assert text.rstrip().endswith(line)
