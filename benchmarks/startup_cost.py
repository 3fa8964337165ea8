"""Interpreter start-up with scopetrace installed (its start-up hook) vs not.

    python benchmarks/startup_cost.py [--runs 40] [--workdir DIR]

Builds the wheel and installs it into a fresh venv (``tests/wheelenv.py``,
as the activation tests do), then measures ``python -c pass`` there:

* installed, ``SCOPETRACE`` unset, ``=0`` and ``=1``;
* not installed: the same venv after ``pip uninstall scopetrace``, so the
  dependencies, and everything else, are the same.

Instruction counts come from ``valgrind --tool=callgrind`` over the whole
process (deterministic: ``PYTHONHASHSEED=0``; two runs of a configuration agree
to a few thousand instructions); wall clock is the minimum and the median of
``--runs`` runs (this machine is noisy: read the instruction counts).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wheelenv import WheelEnv, wheel_env  # noqa: E402

CONFIGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("installed, SCOPETRACE unset", {}),
    ("installed, SCOPETRACE=0", {"SCOPETRACE": "0"}),
    ("installed, SCOPETRACE=1", {"SCOPETRACE": "1"}),
)


def instructions(venv: WheelEnv, env: dict[str, str]) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         str(venv.python), "-c", "pass"],
        env=venv.env(env, PYTHONHASHSEED="0"), capture_output=True, text=True, check=True,
    )
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise RuntimeError(proc.stderr)
    return int(match.group(1))


def wall(venv: WheelEnv, env: dict[str, str], runs: int) -> tuple[float, float]:
    argv, full = [str(venv.python), "-c", "pass"], venv.env(env)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=full, check=True)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def measure(venv: WheelEnv, runs: int) -> list[tuple[str, int, float, float]]:
    rows = []
    for name, env in CONFIGS:
        rows.append((name, instructions(venv, env), *wall(venv, env, runs)))
    subprocess.run(
        [str(venv.python), "-m", "pip", "uninstall", "-q", "-y", "scopetrace"],
        env=venv.env(), check=True,
    )
    rows.append(("not installed", instructions(venv, {}), *wall(venv, {}, runs)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="wall-clock runs per configuration")
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scopetrace-startup-"))
    venv = wheel_env(workdir)
    rows = measure(venv, args.runs)
    base_ir, base_min = rows[-1][1], rows[-1][2]
    print(f"python -c pass, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"ratios against 'not installed'")
    print(f"{'':30} {'instructions':>14} {'ratio':>7}  {'wall min':>9} {'median':>9} {'ratio':>6}")
    for name, ir, best, median in rows:
        print(f"{name:30} {ir:>14,} {ir / base_ir:>7.4f}  {best * 1e3:>7.1f}ms "
              f"{median * 1e3:>7.1f}ms {best / base_min:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
