#!/usr/bin/env python3
"""Run anyio's own test suite plain and with scopetrace installed; compare outcomes.

scopetrace must never change what anyio does.  anyio's source distribution
ships its tests, so this script:

1. downloads the sdist of the anyio version installed for ``--python``
   (``pip download --no-binary :all: --no-deps anyio==X``) and unpacks it;
2. makes a venv with that interpreter and installs scopetrace (this checkout),
   ``anyio[trio]==X`` and anyio's own test requirements;
3. runs anyio's pytest suite twice, identically except that the second run
   calls ``scopetrace.install()`` before any conftest is imported
   (``compat/scopetrace_compat_plugin.py``, loaded with ``-p``);
4. compares every test's outcome.  Tests whose outcome differs are rerun,
   apart from the rest of the suite, ``--reruns`` times in each mode: some of
   anyio's tests depend on timing (this machine is noisy) or on what earlier
   tests leaked.  A test is a *difference* when its rerun outcomes with and
   without scopetrace have nothing in common; otherwise it is listed as
   unstable.  A crash (the interpreter dying) in either run is a problem.

It also checks that merely having scopetrace installed does not stop pytest
from starting in anyio's tests with plugin autoloading on (pytest's default).

Exit status: 0 when there is no difference, the hooks were in place for
every backend and scopetrace counted no internal error; 1 otherwise; 2 when
the run itself could not be set up.

Usage::

    python compat/run_anyio_suite.py                 # anyio version installed here
    python compat/run_anyio_suite.py --anyio 4.16.0 --python python3.13 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The only tests left out: those that need the internet, which CI does not
#: have.  Node ids without ``[params]``; matched exactly, in every anyio 4.x.
NEEDS_INTERNET: dict[str, str] = {
    "tests/test_sockets.py::test_getaddrinfo": (
        "resolves the real domain names 'faß.de' and 'fass.de' through DNS"
    ),
}

#: Environment variables that would change either run: scopetrace's own
#: (SCOPETRACE=1 would activate it in the plain run too) and pytest's.
_SCRUBBED_PREFIXES = ("SCOPETRACE", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")

#: The comparison runs load pytest plugins explicitly, as anyio's own tox
#: configuration does (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1), so that nothing else
#: installed in the venv -- scopetrace's own pytest11 plugin included -- takes
#: part; each is loaded if the venv has it.  Entry-point names, as anyio's
#: addopts spell them (a plugin given twice under one name loads once).
_PLUGINS = ("anyio", "pytest_mock", "timeout")

#: Longest a single pytest run may take before the script gives up on it.
_RUN_LIMIT_S = 40 * 60


def log(message: str) -> None:
    print(f"[anyio-compat] {message}", flush=True)


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def installed_anyio(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('anyio'))"
    try:
        return run([python, "-c", code], capture_output=True).stdout.strip()
    except subprocess.CalledProcessError:
        sys.exit(f"anyio is not installed for {python}: pass --anyio VERSION")


def python_tag(python: str) -> str:
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    return run([python, "-c", code], capture_output=True).stdout.strip()


def fetch_sdist(python: str, version: str, workdir: Path) -> Path:
    """Download and unpack anyio's sdist; return the unpacked source tree."""
    dist = workdir / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    run([python, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
         "--disable-pip-version-check", "-q", "-d", str(dist), f"anyio=={version}"])
    (archive,) = dist.glob("anyio-*.tar.gz")
    tree = workdir / archive.name.removesuffix(".tar.gz")
    if (tree / "tests").is_dir():
        return tree
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # Python < 3.10.12 has no extraction filters; the sdist is PyPI's
            tar.extractall(workdir)
    return tree


def _toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        return tomllib.load(f)


def test_requirements(tree: Path, version: str) -> list[str]:
    """anyio's declared test requirements: an extra in older releases, a dependency group later."""
    meta: dict[str, Any] = _toml(tree / "pyproject.toml")
    extras = meta.get("project", {}).get("optional-dependencies", {})
    if "test" in extras:
        return [f"anyio[trio,test]=={version}"]
    groups = meta.get("dependency-groups", {})
    if not isinstance(groups, dict) or "test" not in groups:
        sys.exit(f"anyio {version}: no 'test' extra or dependency group in pyproject.toml")

    def expand(name: str) -> list[str]:
        out: list[str] = []
        for entry in groups[name]:
            if isinstance(entry, dict):
                out.extend(expand(entry["include-group"]))
            else:
                out.append(" ".join(entry.split()))  # multi-line marker strings
        return out

    return [f"anyio[trio]=={version}", *expand("test")]


def make_venv(
    python: str, venv: Path, project: Path, requirements: list[str], reuse: bool
) -> Path:
    bin_python = venv / "bin" / "python"
    stamp = venv / "scopetrace-compat.json"
    wanted = json.dumps(requirements)
    if reuse and bin_python.exists() and stamp.exists() and stamp.read_text() == wanted:
        log(f"reusing {venv}")
        run([str(bin_python), "-m", "pip", "install", "-q", "--no-deps",
             "--force-reinstall", str(project)])
        return bin_python
    shutil.rmtree(venv, ignore_errors=True)
    run([python, "-m", "venv", str(venv)])
    run([str(bin_python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(project), *requirements])
    stamp.write_text(wanted)
    return bin_python


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}


def plugin_args(python: Path, jobs: int) -> list[str]:
    wanted = [*_PLUGINS, "xdist"] if jobs > 1 else list(_PLUGINS)
    code = (
        "import importlib.metadata as m, sys\n"
        "names = {e.name for e in m.entry_points(group='pytest11')}\n"
        "print(' '.join(n for n in sys.argv[1:] if n in names))"
    )
    found = run([str(python), "-c", code, *wanted], capture_output=True).stdout.split()
    return [arg for name in found for arg in ("-p", name)]


def autoload_check(python: Path, tree: Path) -> str | None:
    """Collect a few of anyio's tests the way pytest runs by default, plugins autoloaded.

    Merely having scopetrace installed must not break someone else's test
    suite: anyio's turns every warning into an error, including the ones
    pytest gives while loading plugins.
    """
    cmd = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
           "tests/test_typedattr.py"]
    done = subprocess.run(cmd, check=False, cwd=tree, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    if done.returncode == 0:
        return None
    lines = (done.stdout + done.stderr).strip().splitlines()
    return (f"with scopetrace merely installed (SCOPETRACE unset), pytest with its default "
            f"plugin autoloading fails in anyio's tests (exit {done.returncode}): "
            f"{lines[-1] if lines else ''}")


def pytest_run(
    python: Path, tree: Path, out: Path, *, traced: bool, args: list[str], log_path: Path
) -> dict[str, Any]:
    """One pytest run of anyio's suite: outcomes, messages and what scopetrace saw."""
    env = clean_env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    # Paths only in --opt=value form: pytest takes a bare path argument, even
    # an option's value, as a hint for finding the rootdir and anyio's config.
    cmd = [str(python), "-m", "pytest", "-p", "scopetrace_compat_plugin", "-p", "no:cacheprovider",
           "-q", f"--rootdir={tree}", f"--compat-out={out}", *args]
    if traced:
        cmd.append("--compat-install")
    stream = Path(f"{out}.jsonl")
    out.unlink(missing_ok=True)
    stream.unlink(missing_ok=True)
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as logfile:
        code = subprocess.run(cmd, check=False, cwd=tree, env=env, stdout=logfile,
                              stderr=subprocess.STDOUT, timeout=_RUN_LIMIT_S).returncode
    result: dict[str, Any] = {"exit": code, "elapsed_s": round(time.monotonic() - started, 1),
                              "outcomes": {}, "messages": {}, "crashed_at": None, "log": log_path}
    if not stream.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        sys.exit(f"pytest exited {code} before running any test; end of {log_path}:\n{tail}")
    running = None
    for line in stream.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "start" in entry:
            running = entry["start"]
        else:
            result["outcomes"][entry["test"]] = entry["outcome"]
            if "message" in entry:
                result["messages"][entry["test"]] = entry["message"]
    if out.exists():
        result["session"] = json.loads(out.read_text())
    else:  # the interpreter died: the test it was running is the crash
        result["session"] = {}
        result["crashed_at"] = running
        if running is not None:
            result["outcomes"][running] = "crashed"
    return result


def counts(outcomes: dict[str, str]) -> str:
    c = Counter(outcomes.values())
    return ", ".join(f"{k}={c[k]}" for k in sorted(c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the venv (default: this one)")
    parser.add_argument("--anyio", help="anyio version (default: the one installed for --python)")
    parser.add_argument("--project", type=Path, default=REPO,
                        help="the scopetrace source tree to install (default: this checkout)")
    parser.add_argument("--workdir", type=Path,
                        help="default: build/anyio-compat/anyio-X-pyY in this checkout")
    parser.add_argument("--jobs", type=int, default=1,
                        help="pytest-xdist workers per run (1: no xdist)")
    parser.add_argument("--reruns", type=int, default=3,
                        help="isolated reruns per mode of each test whose outcome differs")
    parser.add_argument("--reuse-venv", action="store_true",
                        help="keep the venv if it has the same requirements")
    parser.add_argument("pytest_args", nargs="*",
                        help="extra pytest arguments, after --, e.g. -- tests/test_taskgroups.py")
    opts = parser.parse_args(argv)

    python = shutil.which(opts.python) or opts.python
    version = opts.anyio or installed_anyio(python)
    pyver = python_tag(python)
    workdir = (opts.workdir or REPO / "build" / "anyio-compat" / f"anyio-{version}-py{pyver}")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"anyio {version}, Python {pyver} ({python}), work directory {workdir}")

    started = time.monotonic()
    tree = fetch_sdist(python, version, workdir)
    requirements = test_requirements(tree, version)
    if opts.jobs > 1:
        requirements.append("pytest-xdist")
    venv_python = make_venv(python, workdir / "venv", opts.project.resolve(), requirements,
                            opts.reuse_venv)
    log(f"set up in {time.monotonic() - started:.0f}s: {' '.join(requirements)}")

    deselect = workdir / "deselect.json"
    deselect.write_text(json.dumps(sorted(NEEDS_INTERNET)))
    for name, reason in NEEDS_INTERNET.items():
        log(f"deselecting {name}: {reason}")
    common = [*plugin_args(venv_python, opts.jobs), f"--compat-deselect={deselect}",
              *opts.pytest_args]
    full = [*common, "-n", str(opts.jobs)] if opts.jobs > 1 else common

    problems = []
    runs = {}
    for mode in ("plain", "traced"):
        run_ = runs[mode] = pytest_run(venv_python, tree, workdir / f"{mode}.json",
                                       traced=mode == "traced", args=full,
                                       log_path=workdir / f"{mode}.log")
        log(f"{mode} run: {run_['elapsed_s']}s, {counts(run_['outcomes'])} (log: {run_['log']})")
        if run_["crashed_at"] is not None or not run_["session"]:
            problems.append(f"the {mode} run died in {run_['crashed_at']} (see {run_['log']})")
    log(f"deselected {len(runs['plain']['session'].get('deselected', []))} test(s) "
        f"as needing the internet")
    if runs["traced"]["session"]:
        problems.extend(check_traced_run(runs["traced"]["session"], whole=not opts.pytest_args))
    autoload_problem = autoload_check(venv_python, tree)
    if autoload_problem:
        problems.append(autoload_problem)

    plain, traced = runs["plain"]["outcomes"], runs["traced"]["outcomes"]
    # Tests after a crash never ran: compare what both runs reached.
    differing = sorted(k for k in set(plain) & set(traced) if plain[k] != traced[k])
    log(f"{len(differing)} test(s) differ in the full runs")
    history = recheck(venv_python, tree, workdir, common, differing, runs, opts.reruns)
    confirmed = {k: h for k, h in history.items()
                 if opts.reruns <= 0 or not set(h["plain"]) & set(h["traced"])}

    for nodeid, h in history.items():
        label = "DIFFERENCE" if nodeid in confirmed else "unstable, not a difference"
        log(f"{label}: {nodeid}: full runs plain={h['full'][0]} traced={h['full'][1]}; "
            f"reruns plain={h['plain']} traced={h['traced']}")
        for mode in ("plain", "traced"):
            message = runs[mode]["messages"].get(nodeid)
            if message and nodeid in confirmed:
                log(f"    {mode}: {message}")
    for problem in problems:
        log(f"PROBLEM: {problem}")
    session = runs["traced"]["session"]
    log(f"violations scopetrace reported in the traced run: {session.get('violations')}")
    log(f"total {time.monotonic() - started:.0f}s")
    verdict = "OK" if not confirmed and not problems else "FAILED"
    print(f"anyio {version} on Python {pyver} with scopetrace: {verdict}: "
          f"{len(set(plain) & set(traced))} tests compared, {len(confirmed)} difference(s), "
          f"{len(history) - len(confirmed)} unstable, {len(problems)} problem(s)", flush=True)
    return 0 if verdict == "OK" else 1


def check_traced_run(session: dict[str, Any], whole: bool) -> list[str]:
    """The traced run compares something only if the hooks were really in place."""
    problems = []
    if whole and not session.get("violations"):
        # anyio tests its own misnesting errors: a whole run without a single
        # report means the traced run did not exercise scopetrace at all.
        problems.append("scopetrace reported no violation in the whole of anyio's suite")
    hooks = session.get("hooks") or {}
    for module_name in ("anyio._backends._asyncio", "trio"):
        if not hooks.get(module_name):
            problems.append(f"scopetrace's hooks were not in place on {module_name}: {hooks}")
    if not session.get("still_installed"):
        problems.append("scopetrace was no longer installed at the end of the traced run")
    if session.get("internal_errors"):
        problems.append(f"scopetrace counted {session['internal_errors']} internal error(s)")
    return problems


def recheck(
    python: Path,
    tree: Path,
    workdir: Path,
    common: list[str],
    differing: list[str],
    runs: dict[str, dict[str, Any]],
    reruns: int,
) -> dict[str, dict[str, list[str]]]:
    """Rerun the differing tests apart from the rest of the suite, ``reruns`` times per mode."""
    history = {
        k: {"full": [runs["plain"]["outcomes"][k], runs["traced"]["outcomes"][k]],
            "plain": [], "traced": []}
        for k in differing
    }
    for i in range(reruns if differing else 0):
        for mode in ("plain", "traced"):
            pending = list(differing)
            # A crash ends a run: go on with the tests after the one that crashed.
            while pending:
                select = workdir / "select.json"
                select.write_text(json.dumps(pending))
                result = pytest_run(python, tree, workdir / f"rerun-{mode}.json",
                                    traced=mode == "traced",
                                    args=[*common, f"--compat-select={select}"],
                                    log_path=workdir / f"rerun-{i}-{mode}.log")
                outcomes = result["outcomes"]
                for k in pending:
                    if k in outcomes:
                        history[k][mode].append(outcomes[k])
                left = [k for k in pending if k not in outcomes]
                if result["crashed_at"] is None or len(left) == len(pending):
                    for k in left:
                        history[k][mode].append("not run")
                    break
                pending = left
        log(f"rerun {i + 1}/{reruns} of {len(differing)} test(s) done")
    return history


if __name__ == "__main__":
    sys.exit(main())
