"""The counted overhead ratios on every interpreter found: ``overhead.py --interpreters``.

    python benchmarks/overhead.py --interpreters auto           # all it finds
    python benchmarks/overhead.py --interpreters 3.11,3.14      # by name
    python benchmarks/overhead.py --interpreters /opt/py/bin/python3.12 --check
    python benchmarks/overhead.py --interpreters auto --rev HEAD  # a commit, not the work tree

``auto`` is CPython 3.10-3.15: pyenv's newest patch release of each minor
version (``pyenv root``/versions), and for 3.14 and 3.15 where pyenv has none,
Debian sid's, from the chroot ``.ci/newest-pythons.sh`` builds or reuses (its
free-threaded builds too, where it lists them).  An interpreter that cannot be
had is listed as skipped, with the reason.

Each interpreter gets a venv cached under ``~/.cache/scopetrace-bench`` (the
chroot binds ``$HOME``, so one made inside it is reachable from both sides),
and in it scopetrace built from a copy of the tree taken outside the checkout:
a build in the tree would leave ``build/`` and an extension per interpreter
in ``src/``, and the copy keeps files edited during the run out of it.  The C
extension must be built for *that* interpreter: the venv is probed for
``scopetrace._speedups``, the recorder and the asyncio hooks in use, and a
fallback to Python is shown next to its ratios.  Then that venv's Python runs
``overhead.py --method callgrind --counts-only``, one interpreter at a time
(each uses every core, through ``--jobs``), and its last line is parsed.

The budgets are overhead.py's (passed in: this module imports nothing of it);
the memory budget is measured only with ``--memory`` (fresh processes of the
HTTP service, a few minutes per interpreter).  ``--check``: exit 1 if any
interpreter is over a budget, or one that was found could not be measured.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: Minor versions ``auto`` looks for.
PYENV_MINORS = ("3.10", "3.11", "3.12", "3.13")
CHROOT_MINORS = ("3.14", "3.15")
#: Free-threaded builds ``auto`` reports, measured where the chroot lists them.
FREE_THREADED = ("3.14t",)
#: Where the venvs live: outside the checkout, and bound inside the chroot.
CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "scopetrace-bench"
)
#: One probe per venv, before the ten-minute run: what the install gives.
PROBE = """
import json, platform, sys
out = {"version": platform.python_version()}
try:
    from scopetrace import _speedups  # noqa: F401
    out["speedups"] = "imports"
except ImportError as exc:
    out["speedups"] = f"ImportError: {exc}"
import anyio._backends._asyncio as backend
import scopetrace
from scopetrace import _record
out["recorder"] = "C" if _record.ACCELERATED else "python"
scopetrace.install()
try:
    kind = type(backend.CancelScope.__enter__)
    out["enter_hook"] = f"{kind.__module__}.{kind.__qualname__}"
finally:
    scopetrace.uninstall()
from importlib.metadata import version
out["anyio"] = version("anyio")
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Interpreter:
    #: What the tables call it before it has said its version: "3.11", "3.14t", a path.
    name: str
    #: Its executable: a host path, or a path inside the chroot.
    python: str
    #: Prefix that runs a command where ``python`` lives ($CACHE/bin/run), or ().
    runner: tuple[str, ...] = ()
    #: The venv's directory name under CACHE.
    key: str = ""


@dataclass
class Outcome:
    interpreter: Interpreter
    #: The parsed last line of the worker run (empty if it failed).
    fields: dict[str, str] = field(default_factory=dict)
    probe: dict[str, str] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


# -- finding them ------------------------------------------------------------------


def _pyenv_versions() -> str | None:
    try:
        proc = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        root = proc.stdout.strip() if proc.returncode == 0 else ""
    except OSError:
        root = ""
    root = root or os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    versions = os.path.join(root, "versions")
    return versions if os.path.isdir(versions) else None


def _from_pyenv(minor: str) -> Interpreter | str:
    """pyenv's newest CPython ``minor`` (e.g. "3.13", "3.13t"), or why there is none."""
    versions = _pyenv_versions()
    if versions is None:
        return "pyenv is not installed (no `pyenv root`/versions)"
    base, ft = minor.rstrip("t"), "t" if minor.endswith("t") else ""
    found = []
    for entry in os.listdir(versions):
        # "3.12.1" or "3.13.0t"; not "pypy3.10-...", "3.12-dev" or "miniconda3-...".
        m = re.fullmatch(re.escape(base) + r"\.(\d+)" + ft, entry)
        python = os.path.join(versions, entry, "bin", f"python{base}{ft}")
        if m and os.access(python, os.X_OK):
            found.append((int(m.group(1)), entry, python))
    if not found:
        return f"no CPython {minor} in {versions} (pyenv install {minor})"
    _, entry, python = max(found)
    return Interpreter(minor, python, (), f"pyenv-{entry}")


def _chroot_cache() -> str:
    return os.environ.get("SCOPETRACE_CHROOT_CACHE") or "/var/cache/scopetrace-ci/sid"


_CHROOT: dict[str, Interpreter | str] | None = None


def _from_chroot() -> dict[str, Interpreter | str]:
    """What .ci/newest-pythons.sh provides, by name, or why not; run once."""
    global _CHROOT
    if _CHROOT is not None:
        return _CHROOT
    out: dict[str, Interpreter | str] = {}
    script = os.path.join(ROOT, ".ci", "newest-pythons.sh")
    print("finding: bash .ci/newest-pythons.sh (Debian sid chroot; ~2 min if not cached)",
          flush=True)
    proc = subprocess.run(["bash", script], capture_output=True, text=True, check=False)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode != 0:
        why = next((line for line in said if "SKIPPED" in line or "FAILED" in line),
                   said[-1] if said else "")
        kind = "skipped" if proc.returncode == 77 else f"failed (exit {proc.returncode})"
        reason = f".ci/newest-pythons.sh {kind}: {why.removeprefix('newest-pythons: ')}"
        _CHROOT = dict.fromkeys((*CHROOT_MINORS, *FREE_THREADED), reason)
        return _CHROOT
    cache = _chroot_cache()
    run = os.path.join(cache, "bin", "run")
    # Callgrind runs inside the chroot: its valgrind, not the host's.
    check = subprocess.run([run, "sh", "-c", "command -v valgrind"], capture_output=True,
                           text=True, cwd="/", check=False)
    no_valgrind = "" if check.returncode == 0 else (
        "valgrind is not installed in the chroot (it is in .ci/newest-pythons.sh's default "
        "SCOPETRACE_CHROOT_EXTRA_PACKAGES: rebuild with SCOPETRACE_CHROOT_REBUILD=1)"
    )
    with open(os.path.join(cache, "pythons")) as f:
        for line in f:
            # <name> <path inside the chroot> <host wrapper> <free-threaded: 0|1>
            name, inner, _wrapper, _ft = line.split()
            out[name] = no_valgrind or Interpreter(name, inner, (run,), f"sid-{name}")
    for line in said:
        m = re.search(r"SKIPPED \(not in Debian sid\): python(\S+)", line)
        if m:
            out[m.group(1)] = f"not in Debian sid (.ci/newest-pythons.sh): python{m.group(1)}"
    for name in CHROOT_MINORS:
        out.setdefault(name, f"not provided by .ci/newest-pythons.sh (see {cache}/pythons)")
    for name in FREE_THREADED:
        # The script lists one wherever Debian packages it (python3.X-nogil).
        out.setdefault(name, f"not in {cache}/pythons: Debian sid has no "
                             f"python{name.rstrip('t')}-nogil")
    _CHROOT = out
    return out


def _by_name(name: str) -> Interpreter | str:
    """An interpreter named like "3.12" or "3.14t", found as ``auto`` finds it."""
    if not re.fullmatch(r"3\.\d+t?", name):
        return f"not a version name (3.X or 3.Xt) nor a path: {name!r}"
    found = _from_pyenv(name)
    if isinstance(found, Interpreter) or name.rstrip("t") in PYENV_MINORS:
        return found
    # 3.14+ as .ci/matrix.sh takes it: pyenv's where it has one, else Debian's.
    return _from_chroot().get(name, f"{found}; and not provided by .ci/newest-pythons.sh")


def _by_path(path: str) -> Interpreter | str:
    python = shutil.which(path) or path
    if not os.access(python, os.X_OK):
        return f"not an executable: {path}"
    key = "path-" + re.sub(r"[^A-Za-z0-9.]+", "_", os.path.abspath(python)).strip("_")
    return Interpreter(path, os.path.abspath(python), (), key)


def find(spec: str) -> list[Interpreter | tuple[str, str]]:
    """The interpreters ``spec`` names, in order; (name, reason) for each one skipped."""
    names = (
        [*PYENV_MINORS, *CHROOT_MINORS, *FREE_THREADED]
        if spec.strip() == "auto"
        else [s.strip() for s in spec.split(",") if s.strip()]
    )
    out: list[Interpreter | tuple[str, str]] = []
    for name in names:
        found = _by_path(name) if "/" in name else _by_name(name)
        if isinstance(found, Interpreter) and not found.runner and shutil.which("valgrind") is None:
            found = "valgrind is not installed on this machine (apt-get install valgrind)"
        out.append(found if isinstance(found, Interpreter) else (name, found))
    return out


# -- measuring one -----------------------------------------------------------------


def _env() -> dict[str, str]:
    """The environment of every command run for an interpreter: nothing that
    would pick another interpreter's packages or trace the plain runs (but the
    chroot's own settings, which $CACHE/bin/run reads)."""
    drop = ("SCOPETRACE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
            "PYTHONASYNCIODEBUG", "PYTHONTRACEMALLOC", "__PYVENV_LAUNCHER__")
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith("SCOPETRACE_CHROOT_") or not k.startswith(drop)
    }


def _run(argv: Sequence[str], cwd: str = CACHE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=_env(), cwd=cwd,
                          check=False)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    said = (proc.stdout + proc.stderr).strip().splitlines()
    return "\n".join("      " + line for line in said[-lines:])


def snapshot(rev: str | None) -> str:
    """A copy of the tree to install, under CACHE (where the chroot sees it too).

    The work tree's files as they are now (tracked and untracked, less what
    .gitignore leaves out: what ``pip install .`` would build), or ``rev``'s.
    """
    os.makedirs(CACHE, exist_ok=True)
    dest = tempfile.mkdtemp(prefix="src-", dir=CACHE)
    if rev is not None:
        archive = os.path.join(dest, ".tree.tar")
        subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", "-o", archive, rev],
                       check=True)
        subprocess.run(["tar", "-xf", archive, "-C", dest], check=True)
        os.unlink(archive)
        return dest
    listed = subprocess.run(
        ["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):  # not one deleted in the work tree
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def _describe(rev: str | None) -> str:
    proc = subprocess.run(
        ["git", "-C", ROOT, "describe", "--always", *([rev] if rev else ["--dirty"])],
        capture_output=True, text=True, check=False,
    )
    return proc.stdout.strip() or "unknown"


def prepare(interp: Interpreter, tree: str) -> tuple[str, dict[str, str]]:
    """The venv's python with scopetrace built from ``tree`` for this interpreter, and
    what the probe found; RuntimeError with the log's tail if a step failed."""
    venv = os.path.join(CACHE, interp.key)
    python = os.path.join(venv, "bin", "python")
    run = interp.runner
    # A cached venv whose interpreter went away (an upgraded chroot, a
    # removed pyenv version) is made anew.
    if os.path.isdir(venv) and _run([*run, python, "-c", "pass"]).returncode != 0:
        shutil.rmtree(venv)

    def step(what: str, *argv: str) -> str:
        proc = _run([*run, *argv])
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{_tail(proc)}")
        return proc.stdout + proc.stderr

    if not os.path.isdir(venv):
        step("making the venv", interp.python, "-m", "venv", venv)
    pip = (python, "-m", "pip", "--disable-pip-version-check")
    wheels = tempfile.mkdtemp(prefix="wheel-", dir=CACHE)
    try:
        # One build of this tree, then forced in: the version number does not
        # change with the source, so pip would keep an older build as it is.
        # -v: the extension is optional, so a compiler error is only a
        # warning in the build's output; kept to say why if it is missing.
        built = step("building the wheel", *pip, "wheel", "-v", "--no-deps", "-w", wheels, tree)
        (wheel,) = glob.glob(os.path.join(wheels, "scopetrace-*.whl"))
        step("installing it", *pip, "install", "-q", "--force-reinstall", "--no-deps", wheel)
        step("installing the bench extra", *pip, "install", "-q", f"{tree}[bench]")
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    proc = _run([*run, python, "-c", PROBE])
    if proc.returncode != 0:
        raise RuntimeError(f"the probe failed:\n{_tail(proc)}")
    probe: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    if probe["speedups"] != "imports":
        errors = [line.strip() for line in built.splitlines() if "error:" in line]
        probe["build"] = "; ".join(errors[:3]) or "no compiler error in the build's output"
    return python, probe


def measure(interp: Interpreter, tree: str, quick: bool, jobs: int, memory: bool) -> Outcome:
    outcome = Outcome(interp)
    started = time.monotonic()
    try:
        python, outcome.probe = prepare(interp, tree)
    except RuntimeError as exc:
        outcome.error = str(exc)
        return outcome
    probe = outcome.probe
    print(f"  {interp.name}: Python {probe['version']}, anyio {probe['anyio']}, "
          f"_speedups {probe['speedups']}, recorder {probe['recorder']}, "
          f"asyncio enter hook {probe['enter_hook']}", flush=True)
    if "build" in probe:
        print(f"  {interp.name}: NOTE: the C extension did not build: {probe['build']}", flush=True)
    argv = [*interp.runner, python, os.path.join(tree, "benchmarks", "overhead.py"),
            "--method", "callgrind", "--counts-only", "--jobs", str(jobs)]
    if quick:
        argv.append("--quick")
    if memory:
        argv.append("--memory")
    last = ""
    said: collections.deque[str] = collections.deque(maxlen=3)
    # Streamed, so that a ten-minute run shows its progress.
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_env(), cwd=tree) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  [{interp.name}] {line.rstrip()}", flush=True)
            if line.strip():
                said.append(line.strip())
            if line.startswith("interpreter=") and "_ratio=" in line:
                last = line
    outcome.seconds = time.monotonic() - started
    if not last:
        outcome.error = (f"overhead.py --counts-only exited {proc.returncode} without its "
                         f"last line; it ended: {' | '.join(said)}")
        return outcome
    outcome.fields = dict(token.split("=", 1) for token in last.split())
    return outcome


# -- reporting ----------------------------------------------------------------------


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterator[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    yield from ("", title, line, "-" * len(line))
    yield from ("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)


def _label(fields: dict[str, str]) -> str:
    return fields["interpreter"] + ("t" if fields.get("free_threaded") == "1" else "")


def over(outcome: Outcome, budget: dict[str, float]) -> list[str]:
    """The ratios of a measured interpreter that are over their budget."""
    return [k for k, limit in budget.items()
            if k in outcome.fields and float(outcome.fields[k]) > limit]


def report(outcomes: Sequence[Outcome], skipped: Sequence[tuple[str, str]],
           budget: dict[str, float], workloads: Sequence[str]) -> Iterator[str]:
    done = [o for o in outcomes if o.fields]
    rows = []
    for o in done:
        f = o.fields
        row = [_label(f), f["gil"],
               f["recorder"], f["enter_hook"].rsplit(".", 1)[-1]]
        for w in workloads:
            ratio = float(f[f"{w}_ratio"])
            row.append(f"x{ratio:.3f} " + ("ok" if ratio <= budget[f"{w}_ratio"] else "OVER"))
        rows.append(row)
    rows.append(["budget", "", "", "", *(f"<= {budget[f'{w}_ratio']:.2f}" for w in workloads)])
    yield from _table(
        "Instruction-count overhead per interpreter (callgrind; traced / plain anyio, per unit)",
        ["interpreter", "gil", "recorder", "enter hook", *workloads],
        rows,
    )
    rows = [
        [_label(o.fields),
         *(f"{int(o.fields[f'{w}_{m}']):,}" for w in workloads for m in ("plain", "traced"))]
        for o in done
    ]
    yield from _table(
        "Instructions per unit (plain anyio / traced)",
        ["interpreter", *(f"{w} {m}" for w in workloads for m in ("plain", "traced"))],
        rows,
    )
    yield ""
    measured = [o for o in done if "memory_ratio" in o.fields]
    if measured:
        limit = budget.get("memory_ratio", 1.05)
        yield from _table(
            "Memory, realistic service (traced / plain; the budget takes the worse)",
            ["interpreter", "peak RSS", "heap peak during the load", "memory_ratio"],
            [[_label(o.fields), f"x{float(o.fields['memory_rss_ratio']):.3f}",
              f"x{float(o.fields['memory_load_ratio']):.3f}",
              f"x{float(o.fields['memory_ratio']):.3f} "
              + ("ok" if float(o.fields["memory_ratio"]) <= limit else "OVER")]
             for o in measured],
        )
        yield ""
    else:
        yield "memory_ratio (<= 1.05) was not measured: add --memory."
    fell_back = [o for o in done if o.fields["recorder"] != "C"]
    for o in fell_back:
        yield (f"NOTE: {_label(o.fields)} traced with the Python recorder and hooks "
               f"(_speedups: {o.probe.get('speedups', '?')}; build: {o.probe.get('build', '?')})")
    for name, reason in skipped:
        yield f"skipped: {name}: {reason}"
    for o in outcomes:
        if o.error:
            yield f"FAILED: {o.interpreter.name} ({o.interpreter.python}): {o.error}"
    yield ""
    for o in done:
        yield " ".join(f"{k}={v}" for k, v in o.fields.items())


def main(
    spec: str,
    rev: str | None,
    quick: bool,
    jobs: int,
    check: bool,
    limits: dict[str, float],
    workloads: Sequence[str],
    memory: bool = False,
) -> int:
    """``limits``: overhead.py's budgets by ratio name; ``workloads``: those counted."""
    started = time.monotonic()
    print(f"source:   {'revision ' + rev if rev else 'work tree'} {_describe(rev)} of {ROOT}",
          flush=True)
    found = find(spec)
    interps = [i for i in found if isinstance(i, Interpreter)]
    skipped = [i for i in found if not isinstance(i, Interpreter)]
    print("found:    " + (", ".join(f"{i.name} ({i.python}"
                                    + (", in the chroot)" if i.runner else ")") for i in interps)
                          or "none"), flush=True)
    for name, reason in skipped:
        print(f"skipped:  {name}: {reason}", flush=True)
    budget = {f"{w}_ratio": limits[f"{w}_ratio"] for w in workloads}
    if memory:
        budget["memory_ratio"] = limits["memory_ratio"]
    tree = snapshot(rev)
    outcomes = []
    try:
        for interp in interps:
            print(f"\nmeasuring {interp.name}: venv {os.path.join(CACHE, interp.key)}", flush=True)
            outcomes.append(measure(interp, tree, quick, jobs, memory))
            if outcomes[-1].error:
                print(f"  FAILED: {outcomes[-1].error}", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    for line in report(outcomes, skipped, budget, workloads):
        print(line)
    print(f"\n({time.monotonic() - started:.0f} s)", flush=True)
    bad = any(over(o, budget) or o.error for o in outcomes)
    return 1 if check and bad else 0


if __name__ == "__main__":
    sys.exit(main(",".join(sys.argv[1:]) or "auto", None, False, os.cpu_count() or 1, False))
