"""Record at enter: the cheap, raw form of "who entered this scope, from where".

A record is one flat tuple, built on the hot path and read only when a
violation happens::

    (time_ns, otel_context, code_0, lasti_0, code_1, lasti_1, ...)

``code_i``/``lasti_i`` are the code object and last-instruction offset of the
i-th frame, innermost first, starting at the caller of the patched
``__enter__``.  No frame object, local or argument is kept: code objects and
integers only.  Line numbers, file names and text are derived from them later,
by :func:`frames_of` and :func:`format_stack`, and only for a violation.

The C accelerator (``scopetrace._speedups``) builds the same tuple in one call;
the pure-Python fallback below is used when it is not available.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from time import time_ns
from types import CodeType
from typing import Any, NamedTuple

Record = tuple[Any, ...]

#: Offset of the first frame in a record tuple.
FRAMES_AT = 2


class Frame(NamedTuple):
    """One resolved stack entry."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


def _py_capture(var: ContextVar[Any], depth: int) -> Record:
    # Skip this function and the patched __enter__ that calls it.
    return (time_ns(), var.get(None)) + live_stack(depth, skip=2)


try:
    from ._speedups import capture as _c_capture
    from ._speedups import stop_at as _c_stop_at
except ImportError:  # no compiler at install time, or an unsupported interpreter
    _c_capture = _c_stop_at = None

#: ``capture(contextvar, depth) -> Record`` — the hot-path recorder.
capture: Callable[[ContextVar[Any], int], Record] = _c_capture or _py_capture
ACCELERATED = _c_capture is not None

#: Code of the event loops' task-stepping frames: stacks stop there.
_loop_codes: set[CodeType] = set()


def stop_at_loop_frame(code: CodeType) -> None:
    """Make every capture stop at frames running ``code``: an event loop's
    task-stepping function, beyond which every task's stack is the same."""
    _loop_codes.add(code)
    if _c_stop_at is not None:
        _c_stop_at(code)


def _line_of(code: CodeType, lasti: int) -> int:
    if lasti >= 0:
        for start, end, line in code.co_lines():
            if start <= lasti < end and line is not None:
                return line
    return code.co_firstlineno


#: (file name suffix, function) of the frames through which an event loop
#: steps a task: everything from there outwards is the loop, not the task.
_LOOP_FRAMES = (
    (os.path.join("asyncio", "events.py"), "_run"),
    (os.path.join("trio", "_core", "_run.py"), "unrolled_run"),
)


def _is_loop_frame(code: CodeType) -> bool:
    for suffix, name in _LOOP_FRAMES:
        if code.co_name == name and code.co_filename.endswith(suffix):
            return True
    return False


def frames_of(raw: tuple[Any, ...]) -> list[Frame]:
    """Resolve a flat ``(code, lasti, ...)`` sequence, innermost first.

    The stack stops at the event loop's task-stepping frame: the frames
    outside it are the same for every task and only hide the ones that matter.
    """
    frames: list[Frame] = []
    for i in range(0, len(raw) - 1, 2):
        code, lasti = raw[i], raw[i + 1]
        if frames and _is_loop_frame(code):
            break
        name = getattr(code, "co_qualname", code.co_name)
        frames.append(Frame(code.co_filename, _line_of(code, lasti), name))
    return frames


def live_stack(depth: int, skip: int = 1) -> tuple[Any, ...]:
    """The current stack in record form (used for the closer, off the hot path)."""
    try:
        f: Any = sys._getframe(skip + 1)
    except ValueError:  # fewer frames than skipped: entered from C at the stack's bottom
        return ()
    out: list[Any] = []
    loop_codes = _loop_codes
    while f is not None and depth > 0:
        code = f.f_code
        if code in loop_codes:
            break
        out.append(code)
        out.append(f.f_lasti)
        f = f.f_back
        depth -= 1
    del f
    return tuple(out)


def _library_prefixes() -> tuple[str, ...]:
    import asyncio
    import contextlib

    import anyio

    # scopetrace's own frames never reach a stack (capture starts at the
    # caller of the hooks), so its directory is not listed: its demo is user code.
    dirs = [os.path.dirname(m.__file__ or "") for m in (anyio, asyncio)]
    dirs.append(contextlib.__file__ or "contextlib.py")
    try:
        import trio
    except ImportError:
        pass
    else:
        dirs.append(os.path.dirname(trio.__file__ or ""))
    return tuple(d for d in dirs if d)


_prefixes: tuple[str, ...] | None = None


def is_library(filename: str) -> bool:
    """True for frames of anyio, asyncio, trio and contextlib."""
    global _prefixes
    if _prefixes is None:
        _prefixes = _library_prefixes()
    return filename.startswith(_prefixes)


def site_of(frames: list[Frame]) -> str:
    """``path:line in function`` of the innermost frame outside the libraries."""
    for frame in frames:
        if not is_library(frame.filename):
            return str(frame)
    return str(frames[0]) if frames else "<unknown>"


def format_stack(frames: list[Frame]) -> str:
    """Traceback-style text, most recent call last."""
    lines = []
    for frame in reversed(frames):
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.function}')
    return "\n".join(lines)
