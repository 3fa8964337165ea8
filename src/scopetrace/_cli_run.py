"""``scopetrace run [options] -- COMMAND ...``: run any command with tracing on.

In the manner of ``opentelemetry-instrument``: COMMAND replaces this process,
with ``SCOPETRACE=1`` and the given options as ``SCOPETRACE_*`` variables in
its environment.  The start-up hook installed with scopetrace then turns
tracing on in every Python process that COMMAND starts (``python app.py``,
``uvicorn app:app`` and its workers, ...), with no change to the code.

Option values are passed on as they are: a bad one gets the same single
warning, in the traced process, as the variable set by hand would.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import site
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from ._config import SWITCH, Options, accepted, env_name

#: The file site.py runs the start-up hook from (see setup.py).
HOOK_FILE = "scopetrace.pth"


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option, named after it: ``stack_depth`` → ``--stack-depth``."""
    for field in dataclasses.fields(Options):
        help_text = (
            f"{accepted(field.name)} (sets {env_name(field.name)}; default {field.default!r})"
        )
        if field.type in (bool, "bool"):
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(field.name), dest=field.name, metavar="VALUE", default=None, help=help_text
            )
    parser.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the command to run, with its arguments",
    )


def child_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus ``SCOPETRACE=1`` and a ``SCOPETRACE_*`` variable per given option."""
    env = dict(environ)
    env[SWITCH] = "1"
    for field in dataclasses.fields(Options):
        value: Any = getattr(args, field.name)
        if value is None:
            continue
        env[env_name(field.name)] = (
            ("1" if value else "0") if isinstance(value, bool) else str(value)
        )
    return env


def hook_installed() -> bool:
    """Whether this environment's site directories hold the start-up hook."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return any(os.path.isfile(os.path.join(d, HOOK_FILE)) for d in dirs)


def command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.argv)
    if command and command[0] == "--":
        del command[0]
    return command


def run(args: argparse.Namespace) -> int:
    """Replace this process with the command; return only when it cannot start."""
    command = command_of(args)
    if not command:
        sys.stderr.write(
            "scopetrace run: no command given (scopetrace run [options] -- COMMAND ...)\n"
        )
        return 2
    if not hook_installed():
        sys.stderr.write(
            f"scopetrace run: warning: scopetrace's start-up hook ({HOOK_FILE}) is not "
            f"installed in {sys.prefix} (an editable install?): Python programs of this "
            "environment will run untraced\n"
        )
    env = child_environment(args, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if os.name == "nt":  # exec does not replace the process on Windows
            return subprocess.call(command, env=env)
        os.execvpe(command[0], command, env)  # noqa: S606 - replaces this process, by design
    except FileNotFoundError:
        sys.stderr.write(f"scopetrace run: command not found: {command[0]}\n")
        return 127
    except OSError as exc:
        sys.stderr.write(f"scopetrace run: cannot run {command[0]}: {exc.strerror or exc}\n")
        return 126
