"""Options: one place that knows every setting, its default and its variable.

Each option is an :func:`scopetrace.install` keyword and a ``SCOPETRACE_*``
environment variable.  A bad value never stops the application: it gets one
warning naming the variable, the bad value and what is accepted, and the
default is used instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

ENV_PREFIX = "SCOPETRACE_"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ConfigWarning(UserWarning):
    """A scopetrace setting had a value it cannot use; the default applies."""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not lo <= value <= hi:
            raise ValueError
        return value

    parse.accepted = f"an integer from {lo} to {hi}"  # type: ignore[attr-defined]
    return parse


def _float_range(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not lo <= value <= hi:
            raise ValueError
        return value

    parse.accepted = f"a number from {lo:g} to {hi:g}"  # type: ignore[attr-defined]
    return parse


def _choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in values:
            raise ValueError
        return low

    parse.accepted = "one of " + ", ".join(values)  # type: ignore[attr-defined]
    return parse


_bool.accepted = "1/true/yes/on or 0/false/no/off"  # type: ignore[attr-defined]

def _path(text: str) -> str:
    if not text.strip():
        raise ValueError
    return text


_path.accepted = "a non-empty file path"  # type: ignore[attr-defined]

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
    #: depth); past it the oldest go, so a leak cannot grow memory.
    max_open_scopes: int = 20_000


_PARSERS: dict[str, Callable[[str], Any]] = {
    "stack_depth": _int_range(0, 128),
    "exception_notes": _bool,
    "exporter": _choice("console", "jsonl", "otlp", "none"),
    "jsonl_path": _path,
    "rate_limit": _float_range(0.0, 1e9),
    "log_level": _choice(*_LOG_LEVELS),
    "max_open_scopes": _int_range(1_000, 100_000_000),
}


def env_name(field: str) -> str:
    """The environment variable of an option: ``stack_depth`` → ``SCOPETRACE_STACK_DEPTH``."""
    return ENV_PREFIX + field.upper()


def accepted(field: str) -> str:
    """What an option accepts, in words (for warnings and ``--help``)."""
    return str(getattr(_PARSERS[field], "accepted", ""))


def warn_invalid(source: str, value: object, accepted: str, outcome: str, stacklevel: int = 3) -> None:
    """The one warning for a bad setting: what was given, what is accepted, what happens."""
    warnings.warn(
        f"scopetrace: {source}={value!r} is not valid (accepted: {accepted}); {outcome}",
        ConfigWarning,
        stacklevel=stacklevel,
    )


def _warn(source: str, value: object, field: str) -> None:
    default = getattr(Options, field)
    warn_invalid(source, value, accepted(field), f"using the default {default!r}", stacklevel=5)


def resolve(kwargs: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Merge ``install()`` keywords over ``SCOPETRACE_*`` variables over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in kwargs:
        if name not in _PARSERS:
            warnings.warn(
                f"scopetrace: install() has no option {name!r} (accepted: "
                f"{', '.join(_PARSERS)}); ignoring it",
                ConfigWarning,
                stacklevel=3,
            )
    for field in _PARSERS:
        parse = _PARSERS[field]
        if field in kwargs:
            raw = kwargs[field]
            try:
                values[field] = parse(str(raw))
            except (ValueError, TypeError):
                _warn(field, raw, field)
            continue
        text = environ.get(env_name(field))
        if text is None:
            continue
        try:
            values[field] = parse(text)
        except (ValueError, TypeError):
            _warn(env_name(field), text, field)
    return Options(**values)


def log_level_number(options: Options) -> int:
    return int(getattr(logging, options.log_level.upper()))
