"""Options: one place that knows every setting, its default and its variable.

Each option is an :func:`scopetrace.install` keyword and a ``SCOPETRACE_*``
environment variable (docs/configuration.md has the table).

* A keyword is the programmer's: an unknown one raises ``TypeError``, a bad
  value ``ValueError``, at once.
* A variable is the operator's and never stops the application: a bad value
  gets one warning naming the variable, the value and what is accepted, and
  the default is used; an empty value means the default; a ``SCOPETRACE_*``
  name that is no option gets one warning (with the closest name).  Warnings
  are ``ConfigWarning``\\ s; where warnings are errors (``-W error``) the same
  text goes to stderr instead of raising, and tracing stays on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

ENV_PREFIX = "SCOPETRACE_"
#: The on switch, read at interpreter start-up (see _activate).
SWITCH = "SCOPETRACE"
#: Oldest anyio supported: the first whose task groups work with asyncio's
#: eager task factory.  pyproject.toml's dependency says the same (tested).
ANYIO_FLOOR = "4.7"
#: Variables of scopetrace's that are not options: read at build time, or by
#: the project's own tests and CI.
OTHER_VARIABLES = ("SCOPETRACE_NO_EXTENSIONS",)
OTHER_PREFIXES = ("SCOPETRACE_TEST_", "SCOPETRACE_CI_", "SCOPETRACE_CHROOT_", "SCOPETRACE_SID_")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigWarning(UserWarning):
    """A scopetrace setting had a value it cannot use; the default applies."""


@dataclasses.dataclass(frozen=True)
class Parser:
    parse: Callable[[str], Any]
    #: What is accepted, in words (for warnings, errors and ``--help``).
    accepted: str


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError


BOOL = Parser(_bool, "1/true/yes/on or 0/false/no/off")


def _int_range(lo: int, hi: int) -> Parser:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not lo <= value <= hi:
            raise ValueError
        return value

    return Parser(parse, f"an integer from {lo} to {hi}")


def _float_range(lo: float, hi: float) -> Parser:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not lo <= value <= hi:  # also refuses nan
            raise ValueError
        return value

    return Parser(parse, f"a number from {lo:g} to {hi:g}")


def _choice(*values: str) -> Parser:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in values:
            raise ValueError
        return low

    return Parser(parse, "one of " + ", ".join(values))


def _path(text: str) -> str:
    if not text.strip() or "\0" in text:
        raise ValueError
    return text


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclasses.dataclass(frozen=True)
class Options:
    """Every setting of scopetrace, with its default."""

    #: Frames recorded at each scope enter (0 turns stack capture off).
    stack_depth: int = 16
    #: Add a note naming both tasks to anyio's RuntimeError (Python >= 3.11).
    exception_notes: bool = True
    #: Where reports go when the application configured no OTel provider.
    exporter: str = "console"
    #: File the ``jsonl`` exporter appends to.
    jsonl_path: str = "scopetrace-violations.jsonl"
    #: Spans/events/logs per second for one (kind, cause, opener site, closer
    #: site), in bursts of as many; 0 = unlimited.  The counter is always exact.
    rate_limit: float = 10.0
    #: Level of the log record emitted per violation.
    log_level: str = "error"
    #: Most entering records kept for open scopes (~0.5 KB each at the default
    #: depth); past it those of dead scopes and tasks go first, then the oldest.
    max_open_scopes: int = 20_000


PARSERS: dict[str, Parser] = {
    "stack_depth": _int_range(0, 128),
    "exception_notes": BOOL,
    "exporter": _choice("console", "jsonl", "otlp", "none"),
    "jsonl_path": Parser(_path, "a non-empty file path"),
    "rate_limit": _float_range(0.0, 1e9),
    "log_level": _choice(*_LOG_LEVELS),
    "max_open_scopes": _int_range(1_000, 100_000_000),
}


def env_name(field: str) -> str:
    """The environment variable of an option: ``stack_depth`` -> ``SCOPETRACE_STACK_DEPTH``."""
    return ENV_PREFIX + field.upper()


def accepted(field: str) -> str:
    """What an option accepts, in words (for warnings and ``--help``)."""
    return PARSERS[field].accepted


def say(text: str) -> None:
    """One line on stderr, prefixed ``scopetrace:``; never raises."""
    try:
        print(f"scopetrace: {text}", file=sys.stderr, flush=True)
    except Exception:
        pass


_warned: set[str] = set()


def warn(message: str, key: str | None = None, stacklevel: int = 3) -> None:
    """One ConfigWarning per ``key`` per process; on stderr where warnings raise."""
    key = key or message
    if key in _warned:
        return
    _warned.add(key)
    try:
        warnings.warn(f"scopetrace: {message}", ConfigWarning, stacklevel=stacklevel)
    except Warning:
        # -W error: the operator still gets the message, the application
        # still starts, and tracing stays on with the default.
        say(message)


def warn_invalid(source: str, value: object, what: str, outcome: str) -> None:
    """The one warning for a bad variable: what was given, what is accepted, what happens."""
    warn(f"{source}={value!r} is not valid (accepted: {what}); {outcome}", stacklevel=4)


def resolve(kwargs: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Merge ``install()`` keywords over ``SCOPETRACE_*`` variables over defaults.

    Raises TypeError/ValueError for bad keywords; bad variables only warn.
    """
    environ = os.environ if environ is None else environ
    unknown = [name for name in kwargs if name not in PARSERS]
    if unknown:
        raise TypeError(
            f"install() got an unexpected keyword argument {unknown[0]!r} "
            f"(options: {', '.join(PARSERS)}, tracer_provider, meter_provider)"
        )
    values: dict[str, Any] = {}
    for field, parser in PARSERS.items():
        if field in kwargs:
            raw = kwargs[field]
            text = ("1" if raw else "0") if isinstance(raw, bool) else str(raw)
            try:
                values[field] = parser.parse(text)
            except (ValueError, TypeError):
                raise ValueError(
                    f"install({field}={raw!r}): not valid (accepted: {parser.accepted})"
                ) from None
            continue
        variable = environ.get(env_name(field))
        if variable is None or not variable.strip():
            continue  # unset or empty: the default
        try:
            values[field] = parser.parse(variable)
        except (ValueError, TypeError):
            default = getattr(Options, field)
            warn_invalid(
                env_name(field), variable, parser.accepted, f"using the default {default!r}"
            )
    missing = _otlp_missing() if values.get("exporter") == "otlp" else None
    if missing is not None:
        warn(
            f"{env_name('exporter')}='otlp' needs {missing} (pip install 'scopetrace[otlp]'); "
            "reporting on stderr ('console') instead",
            key="otlp-missing",
        )
        values["exporter"] = "console"
    return Options(**values)


def _otlp_missing() -> str | None:
    """The first module the ``otlp`` exporter needs that is not installed."""
    import importlib.util

    for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def warn_environment(environ: Mapping[str, str] | None = None) -> None:
    """One warning per ``SCOPETRACE_*`` variable that is no option (a typo)."""
    environ = os.environ if environ is None else environ
    known = {env_name(field) for field in PARSERS} | {SWITCH, *OTHER_VARIABLES}
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(OTHER_PREFIXES):
            continue
        import difflib

        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warn(f"{name} is not a scopetrace setting{hint}; it is ignored", key=name)


def log_level_number(options: Options) -> int:
    return int(getattr(logging, options.log_level.upper()))
