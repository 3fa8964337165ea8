"""Cost of one hot-path stack capture: C accelerator vs pure-Python fallback.

The loop sits under a stack of ``--stack`` nested Python functions and calls a
wrapper (standing in for the patched ``CancelScope.__enter__``) that calls
``capture(var, depth, scope, task)``.  Three implementations are measured:

* ``c``    -- ``scopetrace._speedups.capture``
* ``py``   -- ``scopetrace._record._py_capture``
* ``noop`` -- ``"".format``: a C callable of any arguments that does
  nothing, so that ``impl - noop`` is the cost of the capture itself, without
  the loop and the wrapper call.

Modes::

    python benchmarks/capture_cost.py                 # wall clock, quick look
    python benchmarks/capture_cost.py --callgrind     # instruction counts

``--callgrind`` runs this script under ``valgrind --tool=callgrind`` once with
``N`` iterations and once with none, and reports ``(Ir(N) - Ir(0)) / N``:
deterministic instructions per iteration (hash seed fixed).  ``--fresh K`` makes
every iteration call through ``K`` brand-new Python frames first; on 3.11+ the
walk then has to create their frame objects, as it does for a real
``async with`` in a just-started function, instead of reusing the ones made on
the first iteration.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from contextvars import ContextVar

IMPLS = ("noop", "py", "c")


def load(impl: str):
    if impl == "noop":
        return "".format  # a C callable that takes the four arguments and does nothing
    if impl == "py":
        from scopetrace._record import _py_capture

        return _py_capture
    from scopetrace._speedups import capture

    return capture


def run(impl: str, depth: int, n: int, stack: int, fresh: int) -> int:
    """Call the wrapper ``n`` times from ``stack`` frames deep; return wall ns."""
    capture = load(impl)
    var: ContextVar[object] = ContextVar("bench")
    var.set(object())

    class Scope:
        pass

    scope, task = Scope(), Scope()

    def enter(var, depth):  # the patched __enter__
        return capture(var, depth, scope, task)

    def through(k):  # k fresh frames, then the wrapper
        if k == 0:
            return enter(var, depth)
        return through(k - 1)

    def loop():
        if fresh:
            start = time.perf_counter_ns()
            for _ in range(n):
                through(fresh)
            return time.perf_counter_ns() - start
        start = time.perf_counter_ns()
        for _ in range(n):
            enter(var, depth)
        return time.perf_counter_ns() - start

    def nest(k):
        return loop() if k == 0 else nest(k - 1)

    return nest(stack)


# -- callgrind driver ----------------------------------------------------------------


def instructions(args: argparse.Namespace, impl: str, depth: int, n: int) -> int:
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, os.path.abspath(__file__), "--worker",
        "--impl", impl, "--depth", str(depth), "-n", str(n),
        "--stack", str(args.stack), "--fresh", str(args.fresh),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        sys.exit(f"callgrind run failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    return int(found.group(1))


def callgrind(args: argparse.Namespace) -> None:
    impls = [i for i in IMPLS if i != "c" or accelerated()]
    print(f"# {sys.implementation.name} {sys.version.split()[0]}, stack={args.stack}, "
          f"fresh={args.fresh}, N={args.n}; instructions per iteration (callgrind Ir)")
    print(f"{'depth':>5} " + " ".join(f"{i:>9}" for i in impls)
          + " " + " ".join(f"{i + '-noop':>9}" for i in impls if i != "noop"))
    for depth in args.depths:
        per = {}
        for impl in impls:
            base = instructions(args, impl, depth, 0)
            per[impl] = (instructions(args, impl, depth, args.n) - base) / args.n
        print(f"{depth:>5} " + " ".join(f"{per[i]:>9.0f}" for i in impls)
              + " " + " ".join(f"{per[i] - per['noop']:>9.0f}" for i in impls if i != "noop"),
              flush=True)


def accelerated() -> bool:
    try:
        load("c")
    except ImportError:
        print("# scopetrace._speedups is not built: C column omitted", file=sys.stderr)
        return False
    return True


def wallclock(args: argparse.Namespace) -> None:
    impls = [i for i in IMPLS if i != "c" or accelerated()]
    print(f"# {sys.version.split()[0]}, stack={args.stack}, fresh={args.fresh}, "
          f"N={args.n}; ns per iteration (best of 5)")
    for depth in args.depths:
        cells = []
        for impl in impls:
            best = min(run(impl, depth, args.n, args.stack, args.fresh) for _ in range(5))
            cells.append(f"{impl}={best / args.n:7.1f}")
        print(f"depth {depth:>3}: " + "  ".join(cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[4, 8, 16], help="comma-separated (default 4,8,16)")
    parser.add_argument("-n", type=int, default=None,
                        help="iterations (default 20000 with --callgrind, else 200000)")
    # nest() x13, loop, run, main, <module>: 17 frames, so depth 16 records 16.
    parser.add_argument("--stack", type=int, default=12, help="nested frames under the loop")
    parser.add_argument("--fresh", type=int, default=0, help="new frames per iteration")
    # Internal: one measured run, as executed under valgrind.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 20_000 if args.callgrind else 200_000

    if args.worker:
        run(args.impl, args.depth, args.n, args.stack, args.fresh)
    elif args.callgrind:
        callgrind(args)
    else:
        wallclock(args)


if __name__ == "__main__":
    main()
