"""Clean text: names, paths and messages from the application, made safe to print.

Task names, coroutine ``__qualname__``\\ s, file names and exception messages are
the application's (or an attacker's) strings.  Anything that reaches a
terminal, a log line or an exception note goes through :func:`clean` first:
control characters (C0, DEL, C1), line and paragraph separators and the
bidirectional overrides that can reorder what a reader sees are written as
``\\xNN``/``\\uNNNN`` escapes, so one report is always one block of text and
never forges another line or colours the terminal.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str) -> str:
    """``text`` with every unsafe character escaped (unchanged if it has none)."""
    if text.isprintable():  # the usual case, decided in C
        return text
    return _UNSAFE.sub(_escape, text)


def clean_block(text: str) -> str:
    """Like :func:`clean`, but keeps the line breaks of a text made of lines."""
    return "\n".join(clean(line) for line in text.split("\n"))


#: Longest task name or coroutine name put in a report.
MAX_NAME = 256
#: Longest stack text put in a report attribute.
MAX_STACKTRACE = 16_384


def cap(text: str, limit: int = MAX_NAME) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
