"""What scopetrace costs: overhead ratios against plain anyio, and the alternatives.

    python benchmarks/overhead.py            # full run: instruction counts + CPU time
    python benchmarks/overhead.py --quick    # seconds; CPU time only (the smoke test)
    python benchmarks/overhead.py --check    # exit 1 if a budget is exceeded
    python benchmarks/overhead.py --interpreters auto   # the counted ratios per interpreter


Each ratio is the cost with tracing at default settings divided by the cost of
plain anyio on the same work.  Instruction counts (callgrind) are the primary
figure; CPU-time rounds the secondary one.  See docs/performance.md for the
method and the numbers, and _measure.py for how each figure is taken.

The last line is machine-readable::

    micro_pair_ratio=A taskgroup_ratio=B echo_ratio=C realistic_ratio=D
    memory_ratio=E debug_mode_ratio=F naive_ratio=G

(one line; debug mode and the naive tracer on the micro pair, against plain).

``--counts-only`` takes the instruction counts of the budgeted workloads
(plain and traced) and nothing else; ``--interpreters`` (interpreters.py) runs
it in a venv of each interpreter it finds and prints one table of them all.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _measure  # noqa: E402
from _measure import Job  # noqa: E402

#: The workloads of the overhead table, in order, and their unit.
OVERHEAD = {
    "micro_pair": "scope pair",
    "move_on_after": "move_on_after block",
    "taskgroup": "fan-out of 10",
    "echo": "echoed message",
    "realistic": "HTTP request",
}
COMPARED = ("traced", "debug", "naive")

#: Instruction-count budgets at default settings (stack capture on).
BUDGET = {
    "micro_pair_ratio": 1.25,
    "taskgroup_ratio": 1.10,
    "echo_ratio": 1.05,
    "realistic_ratio": 1.02,
    "memory_ratio": 1.05,
}
LAST_LINE_KEYS = (
    "micro_pair_ratio",
    "taskgroup_ratio",
    "echo_ratio",
    "realistic_ratio",
    "memory_ratio",
    "debug_mode_ratio",
    "naive_ratio",
)

#: What --counts-only counts: the workloads with an instruction-count budget.
#: The memory budget is left to the full run: it is the one figure that is
#: not a count, and it needs ~2 minutes of fresh processes of its own.
COUNTED_BUDGET = ("micro_pair", "taskgroup", "echo", "realistic")

#: The settings table: stack depths priced with each stack recorder.
DEPTHS = (0, 4, 8, 16, 32)
#: Violation-path settings: every report exported, and the default limiter.
UNLIMITED = (("rate_limit", 1e9),)


@dataclass(frozen=True)
class Plan:
    #: Units per instruction-count run, per workload.
    counted: dict[str, int]
    #: Units per CPU-time run, per workload.
    timed: dict[str, int]
    rounds: int
    memory_requests: int
    memory_repeat: int


FULL = Plan(
    counted={
        "micro_pair": 2000,
        "move_on_after": 2000,
        "taskgroup": 100,
        "echo": 500,
        "realistic": 100,
        "violation": 100,
    },
    timed={
        "micro_pair": 20000,
        "move_on_after": 20000,
        "taskgroup": 300,
        "echo": 1000,
        "realistic": 200,
        "violation": 300,
    },
    rounds=11,
    memory_requests=2000,
    memory_repeat=5,
)
QUICK = Plan(
    counted={
        "micro_pair": 200,
        "move_on_after": 200,
        "taskgroup": 20,
        "echo": 100,
        "realistic": 20,
        "violation": 20,
    },
    timed={
        "micro_pair": 2000,
        "move_on_after": 2000,
        "taskgroup": 30,
        "echo": 100,
        "realistic": 30,
        "violation": 30,
    },
    rounds=3,
    memory_requests=50,
    memory_repeat=1,
)


def _settings(depth: int | None = None) -> tuple[tuple[str, Any], ...]:
    return () if depth is None else (("stack_depth", depth),)


# -- collecting ------------------------------------------------------------------------


def count_all(plan: Plan, parallel: int) -> dict[str, Any]:
    """Every instruction-count figure, in one parallel batch of workers."""
    jobs: dict[str, Job] = {}
    for workload in OVERHEAD:
        for mode in ("plain", *COMPARED):
            jobs[f"{workload}/{mode}"] = Job(workload, mode, plan.counted[workload])
    micro = plan.counted["micro_pair"]
    for capture in ("default", "python"):
        for depth in DEPTHS:
            jobs[f"depth/{capture}/{depth}"] = Job(
                "micro_pair", "traced", micro, _settings(depth), capture
            )
    v = plan.counted["violation"]
    jobs["violation/plain"] = Job("violation", "plain", v)
    jobs["violation/unlimited"] = Job("violation", "traced", v, UNLIMITED)
    jobs["violation/default"] = Job("violation", "traced", v)
    counts = _measure.instructions_per_unit(jobs.values(), parallel)
    return {name: counts[job] for name, job in jobs.items()}


def count_budgeted(plan: Plan, parallel: int) -> dict[str, Any]:
    """The instruction counts of --counts-only: the budgeted workloads, plain and traced."""
    jobs = {
        f"{workload}/{mode}": Job(workload, mode, plan.counted[workload])
        for workload in COUNTED_BUDGET
        for mode in ("plain", "traced")
    }
    counts = _measure.instructions_per_unit(jobs.values(), parallel)
    return {name: counts[job] for name, job in jobs.items()}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def time_all(plan: Plan) -> dict[str, Any]:
    """Every CPU-time figure, from interleaved rounds in this process."""
    import _workloads

    out: dict[str, Any] = {}
    for workload in OVERHEAD:
        modes = [_workloads.Mode(m) for m in ("plain", *COMPARED)]
        plain, ratios = _measure.cpu_rounds(workload, plan.timed[workload], modes, plan.rounds)
        out[f"{workload}/plain"] = _median(plain)
        for i, mode in enumerate(COMPARED, start=1):
            out[f"{workload}/{mode}"] = _median(ratios[i])
    variants = [(c, d) for c in ("default", "python") for d in DEPTHS]
    modes = [_workloads.Mode("plain")]
    modes += [_workloads.Mode("traced", dict(_settings(d)), c) for c, d in variants]
    plain, ratios = _measure.cpu_rounds("micro_pair", plan.timed["micro_pair"], modes, plan.rounds)
    for i, (capture, depth) in enumerate(variants, start=1):
        out[f"depth/{capture}/{depth}"] = _median(ratios[i])
    out["depth/plain"] = _median(plain)
    modes = [
        _workloads.Mode("plain"),
        _workloads.Mode("traced", dict(UNLIMITED)),
        _workloads.Mode("traced"),
    ]
    plain, ratios = _measure.cpu_rounds("violation", plan.timed["violation"], modes, plan.rounds)
    out["violation/plain"] = _median(plain)
    out["violation/unlimited"] = _median(ratios[1]) * out["violation/plain"]
    out["violation/default"] = _median(ratios[2]) * out["violation/plain"]
    return out


def storm_spans(n: int) -> tuple[int, float]:
    """Spans exported for n violations in a burst at default settings, and its CPU seconds."""
    import _workloads

    _workloads.telemetry()
    _workloads.exported_spans()
    mode = _workloads.Mode("traced")
    with mode:
        seconds = mode.run(_workloads.WORKLOADS["violation"], n)
    return _workloads.exported_spans(), seconds


# -- reporting ---------------------------------------------------------------------------


def machine() -> list[str]:
    from scopetrace import _record as _capture

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import version

    capture = "C accelerator (scopetrace._speedups)" if _capture.ACCELERATED else "pure Python"
    return [
        f"machine:  {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"python:   {platform.python_implementation()} {platform.python_version()}, "
        f"anyio {version('anyio')}, scopetrace {version('scopetrace')}",
        f"capture:  {capture} at default settings",
    ]


def _fmt_ratio(value: float) -> str:
    return "n/a" if value != value else f"x{value:.3f}"


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = ["", title, line, "-" * len(line)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return out


def report(
    counted: dict[str, Any] | None,
    timed: dict[str, Any],
    mem: dict[str, dict[str, float]],
    storm: tuple[int, int, float],
) -> tuple[list[str], dict[str, float]]:
    lines: list[str] = []
    ratios: dict[str, float] = {}

    def c_ratio(name: str, mode: str) -> float:
        assert counted is not None
        return counted[f"{name}/{mode}"].per_unit / counted[f"{name}/plain"].per_unit

    rows = []
    for name, unit in OVERHEAD.items():
        row = [name, unit]
        if counted is not None:
            row.append(f"{counted[f'{name}/plain'].per_unit:,.0f}")
            row += [_fmt_ratio(c_ratio(name, m)) for m in COMPARED]
        row.append(f"{timed[f'{name}/plain'] * 1e6:,.1f}")
        row += [_fmt_ratio(timed[f"{name}/{m}"]) for m in COMPARED]
        rows.append(row)
    header = ["workload", "unit"]
    if counted is not None:
        header += ["plain instr", "scopetrace", "debug mode", "naive"]
    header += ["plain CPU us", "scopetrace", "debug mode", "naive"]
    lines += _table(
        "Overhead per unit (ratio = cost / plain anyio's cost; "
        + ("instructions, then CPU time)" if counted is not None else "CPU time)"),
        header,
        rows,
    )

    source = (lambda n, m: c_ratio(n, m)) if counted is not None else (
        lambda n, m: timed[f"{n}/{m}"]
    )
    ratios["micro_pair_ratio"] = source("micro_pair", "traced")
    ratios["taskgroup_ratio"] = source("taskgroup", "traced")
    ratios["echo_ratio"] = source("echo", "traced")
    ratios["realistic_ratio"] = source("realistic", "traced")
    ratios["debug_mode_ratio"] = source("micro_pair", "debug")
    ratios["naive_ratio"] = source("micro_pair", "naive")

    # Settings: the hot path's cost per stack depth and recorder.
    rows = []
    for depth in DEPTHS:
        row = [str(depth) + (" (default)" if depth == 16 else "")]
        for capture in ("default", "python"):
            if counted is not None:
                extra = (
                    counted[f"depth/{capture}/{depth}"].per_unit
                    - counted["micro_pair/plain"].per_unit
                )
                row.append(f"+{extra:,.0f}")
                row.append(_fmt_ratio(1 + extra / counted["micro_pair/plain"].per_unit))
            row.append(_fmt_ratio(timed[f"depth/{capture}/{depth}"]))
        rows.append(row)
    header = ["stack_depth"]
    for capture in ("C", "Python"):
        if counted is not None:
            header += [f"{capture} +instr", f"{capture} ratio"]
        header.append(f"{capture} CPU ratio")
    from scopetrace import _record as _capture

    lines += _table(
        "Cost of each setting on the micro pair (default recorder: "
        + ("C" if _capture.ACCELERATED else "pure Python, no C accelerator built")
        + ")",
        header,
        rows,
    )

    # Memory on the realistic service.
    plain_m, traced_m = mem["plain"], mem["traced"]
    rss_ratio, load_ratio = memory_ratios(mem)
    rows = [
        [
            mode,
            f"{m['maxrss_kib'] / 1024:,.1f}",
            f"{m['process_peak'] / 2**20:,.2f}",
            f"{m['load_peak'] / 2**20:,.2f}",
            f"{m['retained'] / 1024:,.1f}",
        ]
        for mode, m in (("plain", plain_m), ("traced", traced_m))
    ]
    rows.append(
        [
            "ratio",
            _fmt_ratio(rss_ratio),
            _fmt_ratio(traced_m["process_peak"] / plain_m["process_peak"]),
            _fmt_ratio(load_ratio),
            "",
        ]
    )
    lines += _table(
        "Memory, realistic service (tracemalloc: whole process incl. imports; during the "
        "load, above the heap before it; left after it)",
        ["mode", "peak RSS MiB", "process peak MiB", "load peak MiB", "retained KiB"],
        rows,
    )
    # Imports are a one-off (mostly the OpenTelemetry API and wrapt, which an
    # instrumented service has anyway): the budget takes the whole process's
    # RSS and the heap's growth under load, whichever is worse.
    ratios["memory_ratio"] = max(rss_ratio, load_ratio)

    # The violation path.
    rows = []
    if counted is not None:
        base = counted["violation/plain"].per_unit
        for key, label in (("unlimited", "one report, every report exported"),
                           ("default", "storm, default rate limit")):
            count = counted[f"violation/{key}"]
            rows.append([label, "instructions", f"+{count.per_unit - base:,.0f}",
                         f"{count.spans_per_unit:.2f}"])
    base_s = timed["violation/plain"]
    for key, label in (("unlimited", "one report, every report exported"),
                       ("default", "storm, default rate limit")):
        extra = timed[f"violation/{key}"] - base_s
        rows.append([label, "CPU us", f"+{extra * 1e6:,.1f}", ""])
    storm_n, storm_spans_n, storm_s = storm
    lines += _table(
        "Violation path (cost above anyio's own refusal, per violation; spans per violation)",
        ["case", "figure", "cost", "spans"],
        rows,
    )
    lines.append(
        f"storm: {storm_n} violations in a burst at default settings: "
        f"{storm_n / storm_s:,.0f} violations/s of CPU, {storm_spans_n} spans exported"
    )

    # Budget.
    rows = []
    for key, limit in BUDGET.items():
        value = ratios[key]
        rows.append([key, _fmt_ratio(value), f"<= {limit:.2f}", "ok" if value <= limit else "OVER"])
    lines += _table(
        "Budget (" + ("instruction counts" if counted is not None else
                      "CPU time only: not the budget's measure") + "; memory: worse of peak RSS and load peak)",
        ["ratio", "value", "budget", ""],
        rows,
    )
    return lines, ratios


def memory_ratios(mem: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Peak RSS and the heap's peak during the load, traced / plain."""
    plain, traced = mem["plain"], mem["traced"]
    return traced["maxrss_kib"] / plain["maxrss_kib"], traced["load_peak"] / plain["load_peak"]


def report_budgeted(
    counted: dict[str, Any], mem: dict[str, dict[str, float]] | None = None
) -> tuple[list[str], str]:
    """The --counts-only table, and its last line (which --interpreters parses).

    The last line says which interpreter this is and what traced it: a
    recorder that fell back to Python (an extension built for another
    interpreter, or none built) or the Python hooks instead of the C ones
    change the ratios, and a table of interpreters must show why.
    """
    import sysconfig
    from importlib.metadata import version

    rows = []
    fields = {
        "interpreter": platform.python_version(),
        # 0 on a free-threaded build running without the GIL.
        "gil": str(int(getattr(sys, "_is_gil_enabled", lambda: True)())),
        "free_threaded": str(int(bool(sysconfig.get_config_var("Py_GIL_DISABLED")))),
        # As the traced workers saw them (every worker runs the same install).
        "recorder": counted["micro_pair/traced"].recorder,
        "enter_hook": counted["micro_pair/traced"].enter_hook,
        "anyio": version("anyio"),
    }
    for name in COUNTED_BUDGET:
        plain, traced = counted[f"{name}/plain"], counted[f"{name}/traced"]
        ratio = traced.per_unit / plain.per_unit
        limit = BUDGET[f"{name}_ratio"]
        rows.append(
            [name, OVERHEAD[name], f"{plain.per_unit:,.0f}", f"{traced.per_unit:,.0f}",
             _fmt_ratio(ratio), f"<= {limit:.2f}", "ok" if ratio <= limit else "OVER"]
        )
        fields[f"{name}_ratio"] = f"{ratio:.4f}"
        fields[f"{name}_plain"] = f"{plain.per_unit:.0f}"
        fields[f"{name}_traced"] = f"{traced.per_unit:.0f}"
    lines = _table(
        "Instructions per unit, budgeted workloads (memory: not measured by --counts-only)",
        ["workload", "unit", "plain instr", "traced instr", "ratio", "budget", ""],
        rows,
    )
    lines.append(
        f"traced with: {fields['recorder']} recorder, asyncio enter hook {fields['enter_hook']}"
    )
    if mem is not None:
        rss_ratio, load_ratio = memory_ratios(mem)
        ratio = max(rss_ratio, load_ratio)
        limit = BUDGET["memory_ratio"]
        lines.append(
            f"memory (realistic service): peak RSS {_fmt_ratio(rss_ratio)}, heap peak during "
            f"the load {_fmt_ratio(load_ratio)}: {_fmt_ratio(ratio)} <= {limit:.2f} "
            + ("ok" if ratio <= limit else "OVER")
        )
        fields["memory_ratio"] = f"{ratio:.4f}"
        fields["memory_rss_ratio"] = f"{rss_ratio:.4f}"
        fields["memory_load_ratio"] = f"{load_ratio:.4f}"
    return lines, " ".join(f"{key}={value}" for key, value in fields.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument(
        "--method",
        choices=("auto", "callgrind", "cputime"),
        default="auto",
        help="auto: instruction counts too when valgrind is here (not with --quick)",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel valgrind workers"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a budget is exceeded")
    parser.add_argument(
        "--counts-only",
        action="store_true",
        help="instruction counts of " + ", ".join(COUNTED_BUDGET) + " (plain and traced) "
        "only: no CPU time, settings, violation path or memory",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="with --counts-only or --interpreters: the memory budget too (fresh processes "
        "of the realistic service, a few minutes)",
    )
    parser.add_argument(
        "--interpreters",
        metavar="auto|NAME-OR-PATH,...",
        help="--counts-only in a venv of each interpreter (auto: pyenv's 3.10-3.13, and "
        "3.14/3.15 from .ci/newest-pythons.sh; or names like 3.12,3.14t, or paths), "
        "one table of them all; see interpreters.py",
    )
    parser.add_argument(
        "--rev",
        help="with --interpreters: install this git revision (e.g. HEAD), "
        "not the work tree's files as they are",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _measure.run_worker(args.worker)
        return 0
    if args.interpreters is not None:
        # Before the clean-up below: .ci/newest-pythons.sh reads its
        # SCOPETRACE_CHROOT_* settings (every run it starts is cleaned itself).
        import interpreters

        return interpreters.main(
            args.interpreters, rev=args.rev, quick=args.quick, jobs=args.jobs, check=args.check,
            limits=BUDGET, workloads=COUNTED_BUDGET, memory=args.memory,
        )
    if args.rev is not None:
        parser.error("--rev needs --interpreters")

    # Defaults are what is measured: settings from the environment do not leak
    # in, and a start-up activation (SCOPETRACE=1) must not trace the plain runs.
    for key in [k for k in os.environ if k.startswith("SCOPETRACE")]:
        del os.environ[key]
    import scopetrace

    if scopetrace.is_installed():
        scopetrace.uninstall()
        print("note:     scopetrace was active at start-up (SCOPETRACE); turned off", flush=True)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    for line in machine():
        print(line, flush=True)

    use_callgrind = args.method == "callgrind" or (args.method == "auto" and not args.quick)
    # Only where counts are wanted: the check runs valgrind once (~2 s).
    why_not = _measure.callgrind_available() if use_callgrind or args.counts_only else None
    if args.counts_only:
        if why_not is not None:
            print(f"error: {why_not}", file=sys.stderr)
            return 2
        print(f"method:   callgrind instruction counts only ({args.jobs} parallel workers)",
              flush=True)
        budgeted = count_budgeted(plan, args.jobs)
        mem = None
        if args.memory:
            mem = _measure.memory(
                "realistic", plan.memory_requests, ("plain", "traced"), plan.memory_repeat,
                args.jobs,
            )
        lines, last = report_budgeted(budgeted, mem)
        for line in lines:
            print(line)
        print(f"\n({time.monotonic() - started:.0f} s)")
        print(last, flush=True)
        over = any(
            budgeted[f"{w}/traced"].per_unit / budgeted[f"{w}/plain"].per_unit
            > BUDGET[f"{w}_ratio"]
            for w in COUNTED_BUDGET
        ) or (mem is not None and max(memory_ratios(mem)) > BUDGET["memory_ratio"])
        return 1 if args.check and over else 0

    counted = None
    if use_callgrind and why_not is not None:
        if args.method == "callgrind":
            print(f"error: {why_not}", file=sys.stderr)
            return 2
        print(f"method:   CPU time only ({why_not})", flush=True)
    elif use_callgrind:
        print(
            f"method:   callgrind instruction counts ({args.jobs} parallel workers), "
            f"then {plan.rounds} interleaved CPU-time rounds",
            flush=True,
        )
        counted = count_all(plan, args.jobs)
    else:
        print(f"method:   CPU time only, {plan.rounds} interleaved rounds", flush=True)

    timed = time_all(plan)
    mem = _measure.memory(
        "realistic", plan.memory_requests, ("plain", "traced"), plan.memory_repeat, args.jobs
    )
    storm_n = plan.timed["violation"] * 4
    spans, seconds = storm_spans(storm_n)

    lines, ratios = report(counted, timed, mem, (storm_n, spans, seconds))
    for line in lines:
        print(line)
    print(f"\n({time.monotonic() - started:.0f} s)")
    print(" ".join(f"{key}={ratios[key]:.4f}" for key in LAST_LINE_KEYS), flush=True)
    if args.check and counted is not None:
        return 0 if all(ratios[k] <= v for k, v in BUDGET.items()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
