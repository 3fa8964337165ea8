"""Stacks: turning recorded ``(code, lasti)`` pairs into frames, text and sites.

Runs only for a report.  Resolving is cached (a storm repeats the same few
stacks), holds code objects and integers only, and escapes every name it
takes from the code (:mod:`scopetrace._text`).
"""

from __future__ import annotations

import functools
import os
import sys
from types import CodeType
from typing import Any, NamedTuple

from ._text import MAX_STACKTRACE, cap, clean

#: inspect's code flags, without importing inspect (~1 MiB) on every install.
CO_GENERATOR = 0x20
CO_COROUTINE = 0x80
CO_ASYNC_GENERATOR = 0x200


class Frame(NamedTuple):
    """One resolved stack entry."""

    filename: str
    lineno: int
    function: str
    #: First line of the function: with ``filename`` and ``function``, what
    #: tells two frames of the same function apart from two of different ones.
    first_lineno: int = 0
    #: The code object's ``co_flags`` (generator, coroutine, async generator).
    flags: int = 0

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"

    @property
    def name(self) -> str:
        """The function's own name, without the class or enclosing function."""
        return self.function.rpartition(".")[2]

    @property
    def owner(self) -> str:
        """What the qualified name says the function belongs to (a class, or an
        enclosing function); empty for a module-level function."""
        return self.function.rpartition(".")[0]

    def same_function(self, other: Frame) -> bool:
        return (
            self.filename == other.filename
            and self.function == other.function
            and self.first_lineno == other.first_lineno
        )

    @property
    def is_async_generator(self) -> bool:
        return bool(self.flags & CO_ASYNC_GENERATOR)


def line_of(code: CodeType, lasti: int) -> int:
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


def frames_of(raw: tuple[Any, ...]) -> tuple[Frame, ...]:
    """Resolve a flat ``(code, lasti, ...)`` sequence, innermost first.

    The stack stops at the event loop's task-stepping frame: the frames
    outside it are the same for every task and only hide the ones that matter.
    """
    if not raw:
        return ()
    # Code objects compare equal across files (same bytecode, names, lines),
    # so the files are part of the cache key.
    return _resolve(raw, tuple(code.co_filename for code in raw[::2]))


@functools.lru_cache(maxsize=512)
def _resolve(raw: tuple[Any, ...], files: tuple[str, ...]) -> tuple[Frame, ...]:
    frames: list[Frame] = []
    for i in range(0, len(raw) - 1, 2):
        code, lasti = raw[i], raw[i + 1]
        if frames and _is_loop_frame(code):
            break
        name = getattr(code, "co_qualname", code.co_name)
        frames.append(
            Frame(
                clean(code.co_filename),
                line_of(code, lasti),
                cap(clean(name)),
                code.co_firstlineno,
                code.co_flags,
            )
        )
    return tuple(frames)


def format_stack(frames: tuple[Frame, ...]) -> str:
    """Traceback-style text, most recent call last, capped in size."""
    lines = [f'  File "{f.filename}", line {f.lineno}, in {f.function}' for f in reversed(frames)]
    return cap("\n".join(lines), MAX_STACKTRACE)


# -- whose code a frame runs ------------------------------------------------------

#: Top-level packages whose frames are the machinery of scopes and tasks
#: themselves: never the code to fix, unless nothing else is on the stack.
PLUMBING = ("anyio", "asyncio", "trio", "contextlib", "exceptiongroup", "sniffio")


def _plumbing_prefixes() -> tuple[frozenset[str], tuple[str, ...]]:
    found, prefixes = [], []
    for name in PLUMBING:
        path = getattr(sys.modules.get(name), "__file__", None)
        if not path:
            continue
        found.append(name)
        if os.path.basename(path) == "__init__.py":
            prefixes.append(os.path.dirname(path) + os.sep)
        else:
            prefixes.append(path)
    return frozenset(found), tuple(prefixes)


#: (names found, path prefixes): recomputed when another of them is imported
#: (trio may be imported after the first report).
_plumbing: tuple[frozenset[str], tuple[str, ...]] = (frozenset(), ())


def is_plumbing(filename: str) -> bool:
    """True for frames of anyio, asyncio, trio and contextlib (and their helpers)."""
    global _plumbing
    found, prefixes = _plumbing
    if len(found) < len(PLUMBING) and any(
        name not in found and name in sys.modules for name in PLUMBING
    ):
        _plumbing = found, prefixes = _plumbing_prefixes()
    return filename.startswith(prefixes)


def site_of(frames: tuple[Frame, ...]) -> str:
    """``path:line in function`` of the innermost frame outside the plumbing:
    where the application (or a library) entered or exited the scope."""
    frame = first_outside_plumbing(frames)
    if frame is not None:
        return str(frame)
    return str(frames[0]) if frames else "<unknown>"


def first_outside_plumbing(frames: tuple[Frame, ...]) -> Frame | None:
    for frame in frames:
        if not is_plumbing(frame.filename):
            return frame
    return None


def is_task_group_child_wrapper(frames: tuple[Frame, ...]) -> bool:
    """Whether a scope was entered by anyio itself around a task-group child
    (anyio >= 4.14's ``TaskHandle._run_coro``): the first frame outside
    anyio's backends is that function."""
    for frame in frames:
        if f"anyio{os.sep}_backends{os.sep}" in frame.filename:
            continue
        return frame.name == "_run_coro" and frame.filename.endswith(
            os.path.join("anyio", "_core", "_tasks.py")
        )
    return False
