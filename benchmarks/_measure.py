"""How the benchmark measures: instruction counts, CPU-time rounds, memory.

Instruction counts (primary).  A worker process runs one workload in one mode
under ``valgrind --tool=callgrind --collect-atstart=no
--toggle-collect=<ctypes callback> --dump-after=<ctypes callback>``: it warms
the workload up, then runs it twice more, with 0 units and with ``n``, each
from inside a ``ctypes`` callback called by libc's ``qsort``.  callgrind
collects only while that callback runs and writes one count per run, so
interpreter start-up, imports and the warm-up (whose counts wander by about
0.3% between identical processes) are not collected at all.  The cost of one
unit is ``(count(n) - count(0)) / n``: the fixed cost of a run (event loop,
servers, telemetry) cancels out.  Each count starts after a ``gc.collect()``:
otherwise whether a collection of the older generations (as costly as the
whole heap, imports included) lands inside a count depends on the process's
history (its imports, how it was started), not on the workload -- the echo
ratio read x1.058 or x1.045 on the same code depending only on that.  Counts
of identical runs agree to about 1,000 instructions in 28 million.

CPU time (secondary).  In one process, rounds run every mode once each in a
rotating order (install/uninstall between them); a round's ratio pairs a mode
with that round's plain run, and the figure is the median of those ratios.

Memory.  The realistic service in fresh processes, one per mode: peak RSS
(``VmHWM``) without tracemalloc, and with ``-X tracemalloc`` (so that
imports count too, as they do for an operator) the whole process's peak, the
peak during the load above the heap before it, and what the load left behind
after a ``gc.collect()``.  The collector runs at fixed points, every
MEMORY_COLLECT_EVERY requests, with its automatic runs off, in both modes:
left to its thresholds, it ran at different moments in each mode (a traced
run allocates a record per scope), and the garbage alive at those moments
moved the peak by ±6% from run to run, more than scopetrace adds.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "overhead.py")

#: The ctypes trampoline every Python callback called from C goes through:
#: callgrind collects exactly while it is on the stack.  An LTO build (such as
#: Debian's) names it closure_fcn.lto_priv.0: see toggle_symbol().
TOGGLE_SYMBOL = "closure_fcn"
#: Units run before the measured run: imports, caches and the first
#: connections are then done, in the n run and the 0 run alike.
WARM_UNITS = 20
#: Requests between two collections in the memory runs.
MEMORY_COLLECT_EVERY = 50


@dataclass(frozen=True)
class Job:
    """One worker run: a workload, in a mode, with settings, for n units."""

    workload: str
    mode: str
    n: int
    #: ``scopetrace.install()`` keywords, as sorted (name, value) pairs.
    settings: tuple[tuple[str, Any], ...] = ()
    capture: str = "default"
    #: "" (count instructions), "rss" or "tracemalloc"
    memory: str = ""

    def argv(self) -> list[str]:
        return [SCRIPT, "--worker", json.dumps(asdict(self), sort_keys=True)]

    @classmethod
    def parse(cls, spec: str) -> Job:
        fields = json.loads(spec)
        fields["settings"] = tuple((k, v) for k, v in fields["settings"])
        return cls(**fields)


def worker_env() -> dict[str, str]:
    """The environment of every worker: fixed hashing, no inherited settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        # SCOPETRACE itself too: its start-up hook would trace the plain runs.
        if not k.startswith(("SCOPETRACE", "PYTHONASYNCIODEBUG", "PYTHONTRACEMALLOC"))
    }
    env["PYTHONHASHSEED"] = "0"
    return env


# -- the worker side ----------------------------------------------------------------


def run_worker(spec: str) -> None:
    """Body of ``overhead.py --worker JSON``: run one job, print one RESULT line."""
    job = Job.parse(spec)
    import _workloads

    workload = _workloads.WORKLOADS[job.workload]
    mode = _workloads.Mode(job.mode, dict(job.settings), job.capture)
    result: dict[str, Any] = {}
    if job.memory:
        # Collections at fixed points of the load, the same in every mode
        # (see _workloads.COLLECT_EVERY): a peak then measures what the mode
        # keeps, not when the collector's thresholds happened to trip.
        _workloads.COLLECT_EVERY = MEMORY_COLLECT_EVERY
        gc.disable()
    with mode:
        mode.run(workload, WARM_UNITS)
        _workloads.exported_spans()  # count only the measured run's spans
        if job.memory == "tracemalloc":
            import tracemalloc

            gc.collect()
            before, startup_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            cpu = mode.run(workload, job.n)
            load_peak = tracemalloc.get_traced_memory()[1]
            gc.collect()
            result.update(
                process_peak=max(startup_peak, load_peak),
                load_peak=load_peak - before,
                retained=tracemalloc.get_traced_memory()[0] - before,
            )
        elif job.memory == "rss":
            cpu = mode.run(workload, job.n)
            result.update(maxrss_kib=_peak_rss_kib())
        else:
            # Each count from the same collector state (see the module docstring).
            gc.collect()
            _run_collected(lambda: mode.run(workload, 0))  # the first count
            gc.collect()
            cpu = _run_collected(lambda: mode.run(workload, job.n))  # the second
            result.update(_traced_with())  # after the counts: nothing of it is counted
        result["cpu"] = cpu
        result["spans"] = _workloads.exported_spans()
    print("RESULT " + json.dumps(result), flush=True)


def _traced_with() -> dict[str, str]:
    """The recorder and the asyncio enter hook in place now (inside the mode).

    What a ratio means depends on them: the recorder falls back to Python when
    the accelerator was built for another interpreter or fails its self-check,
    and the C hooks (``_speedups.ScopeHook``) need the C recorder and a GIL
    build; elsewhere the hook is a Python function.
    """
    from scopetrace import _record

    in_c = _record.ACCELERATED and _record.capture is not _record._py_capture
    backend = sys.modules.get("anyio._backends._asyncio")
    hook = "-"
    if backend is not None:
        kind = type(backend.CancelScope.__enter__)
        hook = f"{kind.__module__}.{kind.__qualname__}"
    return {"recorder": "C" if in_c else "python", "enter_hook": hook}


def _peak_rss_kib() -> int:
    """This process's peak resident set, in KiB.

    Linux's ``ru_maxrss`` survives ``exec``: a worker started from a big
    benchmark process would report the parent's size.  ``VmHWM`` belongs to
    the address space, which ``exec`` replaces.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _run_collected(run: Any) -> float:
    """Call ``run`` from C (libc qsort's comparator) so callgrind can toggle on it."""
    import ctypes

    box: list[Any] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    def compare(_a: Any, _b: Any) -> int:
        if not box:  # qsort of two items compares once; be safe if it did more
            try:
                box.append(run())
            except BaseException as exc:  # ctypes would print and drop it
                box.append(exc)
        return 0

    items = (ctypes.c_int * 2)(0, 1)
    ctypes.CDLL(None).qsort(items, 2, ctypes.sizeof(ctypes.c_int), compare)
    if isinstance(box[0], BaseException):
        raise box[0]
    return float(box[0])


# -- the parent side -----------------------------------------------------------------


def callgrind_available() -> str | None:
    """Why instruction counts cannot be taken here, or None if they can."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind)"
    try:
        import ctypes

        ctypes.CDLL(None).qsort  # noqa: B018 - the lookup is the check
    except Exception as exc:  # pragma: no cover - ctypes is part of CPython here
        return f"ctypes cannot call libc qsort: {exc}"
    if toggle_symbol() is None:
        return (
            f"callgrind sees no {TOGGLE_SYMBOL} in this interpreter's _ctypes: its symbols "
            "are stripped (Debian's python3.X-dbg has them)"
        )
    return None


#: One callback through ctypes from qsort, as the worker makes them.
_ONE_CALLBACK = (
    "import ctypes\n"
    "f = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(lambda a, b: 0)\n"
    "ctypes.CDLL(None).qsort((ctypes.c_int * 2)(0, 1), 2, ctypes.sizeof(ctypes.c_int), f)\n"
)


@functools.cache
def toggle_symbol() -> str | None:
    """The trampoline's name as this interpreter's build spells it, or None if
    callgrind cannot see it.

    --toggle-collect takes a wildcard, --dump-after only the exact name: one
    short profile of one callback, collected only inside ``closure_fcn*``,
    names it (once per process; a few seconds).
    """
    with tempfile.TemporaryDirectory(prefix="scopetrace-bench-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                f"--toggle-collect={TOGGLE_SYMBOL}*",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                _ONE_CALLBACK,
            ],
            capture_output=True,
            env=worker_env(),
            cwd=tmp,
            check=False,
        )
        try:
            with open(out) as f:
                found = re.search(rf"^c?fn=\(\d+\) ({TOGGLE_SYMBOL}[\w.]*)$", f.read(), re.M)
        except OSError:
            found = None
    return found.group(1) if found else None


def _result(stdout: str, job: Job, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {job} printed no result; its stderr ends:\n{stderr[-3000:]}")


def _instructions(job: Job) -> tuple[int, int, dict[str, Any]]:
    """(count with 0 units, count with n units, the worker's result) for one job."""
    with tempfile.TemporaryDirectory(prefix="scopetrace-bench-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                f"--toggle-collect={toggle_symbol() or TOGGLE_SYMBOL}",
                f"--dump-after={toggle_symbol() or TOGGLE_SYMBOL}",
                f"--callgrind-out-file={out}",
                sys.executable,
                *job.argv(),
            ],
            capture_output=True,
            text=True,
            env=worker_env(),
            cwd=tmp,
            check=False,
        )
        result = _result(proc.stdout, job, proc.stderr)
        empty, full = (_total(f"{out}.{i}", job) for i in (1, 2))
    return empty, full, result


def _total(path: str, job: Job) -> int:
    try:
        with open(path) as f:
            match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE)
    except OSError:
        match = None
    if match is None:
        raise RuntimeError(f"no instruction count in {os.path.basename(path)} for {job}")
    return int(match.group(1))


def _run_plain(job: Job, python_args: Sequence[str] = ()) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, *python_args, *job.argv()],
        capture_output=True,
        text=True,
        env=worker_env(),
        check=False,
    )
    return _result(proc.stdout, job, proc.stderr)


@dataclass
class Count:
    """Instructions per unit of one configuration, and what its run reported."""

    per_unit: float
    spans_per_unit: float
    #: What traced it (see _traced_with); "" from a worker that did not say.
    recorder: str = ""
    enter_hook: str = ""


def instructions_per_unit(jobs: Iterable[Job], parallel: int) -> dict[Job, Count]:
    """``(count(n) - count(0)) / n`` for every job, running workers in parallel."""
    jobs = list(jobs)
    done = 0
    toggle_symbol()  # once, before the threads

    def run(job: Job) -> tuple[int, int, dict[str, Any]]:
        nonlocal done
        counted = _instructions(job)
        done += 1  # progress only: a lost update under threads would be harmless
        print(f"  counted {done}/{len(jobs)}: {job.workload} {job.mode}", file=sys.stderr)
        return counted

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        counted = list(pool.map(run, jobs))
    return {
        job: Count(
            (full - empty) / job.n,
            result.get("spans", 0) / job.n,
            result.get("recorder", ""),
            result.get("enter_hook", ""),
        )
        for job, (empty, full, result) in zip(jobs, counted)
    }


def memory(
    workload: str, n: int, modes: Sequence[str], repeat: int, parallel: int
) -> dict[str, dict[str, float]]:
    """Per mode, the medians of peak RSS (KiB) and the tracemalloc figures (bytes)."""
    runs = [
        (mode, job, args)
        for _ in range(repeat)
        for mode in modes  # interleaved, so that drift hits every mode alike
        for job, args in (
            (Job(workload, mode, n, memory="rss"), ()),
            (Job(workload, mode, n, memory="tracemalloc"), ("-X", "tracemalloc")),
        )
    ]
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        results = list(pool.map(lambda run: _run_plain(run[1], run[2]), runs))
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    for (mode, _, _), result in zip(runs, results):
        for key, value in result.items():
            samples[mode].setdefault(key, []).append(float(value))
    return {
        mode: {key: statistics.median(values) for key, values in by_key.items()}
        for mode, by_key in samples.items()
    }


def cpu_rounds(
    workload_name: str,
    n: int,
    modes: Sequence[Any],
    rounds: int,
) -> tuple[list[float], dict[int, list[float]]]:
    """Interleaved CPU-time rounds in this process.

    ``modes[0]`` must be plain.  Returns the plain seconds per unit of each
    round, and for each other mode (by index) its per-round ratios to plain.
    """
    import _workloads

    workload = _workloads.WORKLOADS[workload_name]
    for mode in modes:  # warm-up: imports, caches, first connections
        with mode:
            mode.run(workload, min(n, WARM_UNITS))
    plain: list[float] = []
    ratios: dict[int, list[float]] = {i: [] for i in range(1, len(modes))}
    for r in range(rounds):
        order = list(range(len(modes)))
        order = order[r % len(order) :] + order[: r % len(order)]
        seconds: dict[int, float] = {}
        for i in order:
            with modes[i]:
                seconds[i] = modes[i].run(workload, n)
        plain.append(seconds[0] / n)
        for i in ratios:
            if seconds[0] > 0:
                ratios[i].append(seconds[i] / seconds[0])
    _workloads.exported_spans()
    return plain, ratios
