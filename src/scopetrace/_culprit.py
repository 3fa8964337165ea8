"""Culprit: the frame whose code split a scope's lifetime across tasks.

The innermost frame outside anyio is where the scope was *entered* -- nearly
always a library used correctly on its own terms (``mcp``'s ``BaseSession``
entering its task group in ``__aenter__``).  The code to fix is whoever held
that library's context manager open across a task boundary: higher up, in
the same two stacks.  It is found by reading the entering and exiting stacks
side by side, level by level from the scope outwards (frames of anyio,
asyncio, trio and contextlib, and of pytest, are left out first):

* **same function** on both sides -- a generator-based context manager
  resumed to exit (``@asynccontextmanager`` bodies), or one function running
  in both tasks: that level nests correctly, look further out;
* **a delegation** -- two functions of one owner (same file, same class, or
  the same module's functions): ``__aenter__``/``__aexit__``,
  ``connect()``/``cleanup()``, ``start()``/``close()``.  That owner entered
  the inner context manager in one call and exited it in another, i.e. it
  carried the lifetime across the gap: the culprit, if it is outside the
  library that entered the scope -- unless the level outside it is one
  async generator resumed by the other task (below);
* **a break** -- anything else, or one stack ends: the two tasks' code paths
  part here, so the first frame outside that library on the entering side
  (the code that entered the library's context manager) is the culprit.

Several frames are often defensible.  Why these rules pick the one they pick:

* The library that entered the scope is presumed innocent when its own frames
  pair up (it was entered and exited as a unit): fixing it would not help, its
  caller split it.  ``fastmcp``'s ``Client.__aenter__``/``__aexit__`` over
  ``mcp``; ``pydantic_ai``'s ``MCPServer`` over ``mcp``; ``agents``'
  ``connect()``/``cleanup()`` over ``mcp``.
* The *innermost* delegation outside that library wins over outer ones: the
  outer layers (a toolset combining servers, the agent run) hold the inner
  object, but only the innermost one holds the scope's owner itself; the
  upstream fixes of the cases above changed exactly that layer.
* An ``__aenter__``/``__aexit__`` pair called from *one async generator
  frame at the same line* on both sides is one ``async with`` statement seen
  from its two halves: the generator was suspended inside it and resumed by
  the other task.  It nests correctly; whoever moved the generator between
  tasks split it.  That is the fixture under a test runner (pytest-asyncio
  runs a fixture's setup and teardown as two tasks, by design: its frames are
  left out, and the fixture is the culprit), or the consumer that dropped an
  iterated generator (below).  Two *coroutines* at the same line are two
  calls, not one frame: there the pair really carried the lifetime.
* When every level pairs up to the end of the stacks, the outermost frame
  is the culprit: anyio's ``TestRunner`` (which promises one task for a test
  and its fixtures), or a fixture whose runner's frames were left out.
* When the library itself delegated (its own frames do not pair up: the
  claude-agent-sdk's ``Query.start()``/``Query.close()``) and nothing outside
  it breaks, the library is the culprit.
* When each side used a context manager in a ``with`` block of its own, the
  context manager itself carried the scope from one task to the other (a
  shared, ref-counted connection): it is the culprit, not its callers.
* An async generator that spans the scope and is abandoned by its consumer
  (closed by the event loop's finalizer, or never) is culpable where it was
  dropped: the consumer's frame, the first one the closing side lacks.

With only the entering stack (an orphan warning, or the scope in the way of
a misnest) the same rules apply to one side: an iterated or runner-driven
async generator on the stack holds everything inside it across a yield, so
the outermost one decides (its consumer, or the fixture itself); otherwise,
outwards from the scope, past the library's own frames and the generator-based
context managers, the first frame that is neither.
"""

from __future__ import annotations

import linecache
import os
from collections.abc import Callable

from . import _fixtures, _packages
from ._report import Culprit, Fixture
from ._stacks import Frame, is_plumbing

Frames = tuple[Frame, ...]


def _skipped(frame: Frame) -> bool:
    if _fixtures.runner_of(frame) == "anyio":
        return False  # anyio's test runner promises one task: it can be at fault
    return is_plumbing(frame.filename) or _fixtures.is_runner_frame(frame)


def _package(frame: Frame) -> str:
    """The top-level package of a frame's file; "" for the application's code."""
    place = _packages.top_level(frame.filename)
    return place[1] if place is not None else ""


_CONTEXTLIB = f"{os.sep}contextlib.py"


def _walked(frames: Frames) -> tuple[Frames, tuple[bool, ...]]:
    """The frames a culprit can be (innermost first), and for each whether it
    is a generator driven by contextlib -- an ``@asynccontextmanager`` body,
    which nests like any ``async with`` -- as opposed to one iterated by a
    consumer or driven by a test runner."""
    kept: list[Frame] = []
    managed: list[bool] = []
    for i, frame in enumerate(frames):
        if _skipped(frame):
            continue
        driver = frames[i + 1] if i + 1 < len(frames) else None
        kept.append(frame)
        managed.append(
            frame.is_async_generator
            and driver is not None
            and driver.filename.endswith(_CONTEXTLIB)
        )
    return tuple(kept), tuple(managed)


def _same(a: Frame, b: Frame) -> bool:
    return a.same_function(b)


def _resumed(a: Frame, b: Frame) -> bool:
    """One async generator frame, seen from two tasks: same code, same line."""
    return a.is_async_generator and a.same_function(b) and a.lineno == b.lineno


def _delegation(a: Frame, b: Frame) -> bool:
    return a.filename == b.filename and a.owner == b.owner and a.function != b.function


_COUNTERPARTS = {("__aenter__", "__aexit__"), ("__enter__", "__exit__")}


def _counterparts(a: Frame, b: Frame) -> bool:
    """The two halves of one context manager protocol."""
    return _delegation(a, b) and (a.name, b.name) in _COUNTERPARTS


def _with_statement(frame: Frame) -> bool:
    """Whether the frame's line (or one of the two before it, for a with
    statement spread over lines) is a ``with``/``async with`` statement.

    Reads the source through linecache: only in the cases the stacks alone
    cannot decide, and once per file.
    """
    for lineno in (frame.lineno, frame.lineno - 1, frame.lineno - 2):
        if lineno <= 0:
            break
        line = linecache.getline(frame.filename, lineno).strip()
        if line.startswith(("async with ", "with ", "async with(", "with(")):
            return True
        if lineno != frame.lineno and line.endswith((":", ")")) and not line.endswith(","):
            break  # a statement of its own ended before the frame's line
    return False


def find(  # noqa: PLR0917 - the facts of one report, each optional
    opener: Frames,
    closer: Frames | None,
    blocker: Frames | None = None,
    fixture: Fixture | None = None,
    package_of: Callable[[Frame], str] = _package,
    same_task: bool = False,
) -> Culprit | None:
    """The culprit of a report, from its stacks (innermost frame first).

    ``blocker``: the stack that entered the scope in the way of a misnest.
    If the block that entered it is still running on the exiting stack (a
    ``with`` block the exit happens inside), the exit is what is misplaced:
    the two stacks decide as usual.  Otherwise it was left open -- an
    abandoned generator, a call that returned with a session open -- and what
    matters is who left it open: its stack alone decides.
    ``package_of`` is injectable for tests.
    """
    if blocker and not (closer and _still_running(blocker, closer)):
        # The scope in the way may be open in the very task that exited the
        # outer one (a misnest): it was not exited in time, not "in another task".
        return _one_side(
            blocker, package_of, "the scope in the way", "before the scope outside it was exited"
        )
    if closer is None:
        return _one_side(opener, package_of, "the scope")
    return _two_sides(opener, closer, fixture, package_of, same_task)


def _two_sides(
    opener: Frames,
    closer: Frames,
    fixture: Fixture | None,
    package_of: Callable[[Frame], str],
    same_task: bool,
) -> Culprit | None:
    o, managed = _walked(opener)
    c, _ = _walked(closer)
    if not o:
        if not opener:
            return None
        return Culprit(
            opener[0], "only anyio's own frames were recorded when the scope was entered"
        )
    lib = package_of(o[0])
    inside: int | None = None  # the innermost delegation within the library itself
    for k, a in enumerate(o):
        if k >= len(c):
            # The closing side ended.  Inside the library, a delegation found
            # further in is the better answer (it split itself).
            if package_of(a) == lib and inside is not None:
                break
            return Culprit(a, _reason_break(o, managed, c, k, lib, same_task))
        b = c[k]
        shared = k > 0 and _counterparts(o[k - 1], c[k - 1])
        if _same(a, b):
            if shared and not a.is_async_generator:
                # Two runs of one function, in two tasks, used one context
                # manager: it carried the scope from one to the other (a
                # shared, ref-counted connection), not the function.
                return Culprit(
                    o[k - 1],
                    _reason_shared(o[k - 1], c[k - 1], f"two runs of {a.function}", same_task),
                )
            continue  # a context manager's body, or one generator frame resumed elsewhere
        if shared and _with_statement(a) and _with_statement(b):
            # Each side used the context manager in a with block of its own.
            return Culprit(
                o[k - 1],
                _reason_shared(o[k - 1], c[k - 1], f"{a.function} and {b.function}", same_task),
            )
        if not _delegation(a, b):
            # A break: the two code paths part.  Inside the library, a
            # delegation found further in is the better answer.
            if package_of(a) == lib and inside is not None:
                break
            return Culprit(a, _reason_break(o, managed, c, k, lib, same_task))
        if k + 1 < len(o) and k + 1 < len(c) and _resumed(o[k + 1], c[k + 1]):
            continue  # one async with, in one generator frame moved between tasks
        if package_of(a) != lib:
            return Culprit(a, _reason_delegation(o, c, k, lib, same_task))
        if inside is None and not _counterparts(a, b):
            # The library's own methods split it (start()/close()); a context
            # manager's two halves are no such split: whoever called them is.
            inside = k
    last = o[-1]
    if (
        last.is_async_generator
        and not managed[-1]
        and len(c) >= len(o)
        and _resumed(last, c[len(o) - 1])
    ):
        # The walk ended at a generator moved between tasks by a runner whose
        # frames are left out: the fixture held the scope across its yield.
        return Culprit(
            last, f"{last.function} held the scope across a yield: {_runner_words(fixture)}"
        )
    if inside is not None:
        a, b = o[inside], c[inside]
        return Culprit(
            a, f"{_name(lib)}'s {a.function} entered it and {b.function} {_exited(same_task)}"
        )
    # Every level paired up to the end of the stacks.
    return Culprit(
        last, f"both tasks ran {last.function} down to the scope: {_runner_words(fixture)}"
    )


def _reason_shared(enter: Frame, exit_: Frame, users: str, same_task: bool) -> str:
    if same_task:
        # One task ran both halves (a misnest): saying "in different tasks"
        # would contradict the report's own "entered by"/"exited by".
        return (
            f"{users} used {enter.owner or enter.function} as a context manager; "
            f"{enter.function} entered the scope and {exit_.function} {_exited(True)}"
        )
    return (
        f"{users} each used {enter.owner or enter.function} as a context manager, in different "
        f"tasks; {enter.function} entered the scope for both and {exit_.function} exited it "
        "in the other task"
    )


def _still_running(blocker: Frames, closer: Frames) -> bool:
    """Whether the frame that entered the blocking scope is on the exiting
    stack, with the same callers at the same lines: the block is still open."""
    inner = next((f for f in blocker if not _skipped(f)), None)
    if inner is None:
        return False
    outer = blocker[blocker.index(inner) + 1 :]
    for i, frame in enumerate(closer):
        if frame.same_function(inner):
            return all(
                a.same_function(b) and a.lineno == b.lineno
                for a, b in zip(outer, closer[i + 1 :], strict=False)
            )
    return False


def _name(lib: str) -> str:
    return lib or "the application"


def _runner_words(fixture: Fixture | None) -> str:
    if fixture is not None:
        return (
            f"fixture {fixture.name!r}'s setup and teardown ran in different tasks "
            f"({fixture.runner})"
        )
    return "the task that entered the scope is not the one that exited it"


def _exited(same_task: bool) -> str:
    if same_task:
        return "exited it while a scope entered after it was still open"
    return "exited it in another task"


def _reason_delegation(o: Frames, c: Frames, k: int, lib: str, same_task: bool) -> str:
    inner = o[k - 1] if k > 0 else o[0]
    return (
        f"{o[k].function} entered {_name(lib)}'s {inner.function} and {c[k].function} "
        f"{_exited(same_task)}"
    )


def _reason_break(  # noqa: PLR0917 - the walk's state at the break
    o: Frames, managed: tuple[bool, ...], c: Frames, k: int, lib: str, same_task: bool
) -> str:
    inner = o[k - 1] if k > 0 else None
    if k >= len(c):
        if inner is not None and inner.is_async_generator and not managed[k - 1]:
            return (
                f"the async generator {inner.function} held the scope across a yield; "
                f"{o[k].function} stopped iterating it without closing it (contextlib.aclosing)"
            )
        return f"{o[k].function} entered it; the task that exited it never ran this code"
    what = f"{_name(lib)}'s {inner.function}" if inner is not None else "the scope"
    return f"{o[k].function} entered {what}, and {c[k].function} {_exited(same_task)}"


def _one_side(
    frames: Frames,
    package_of: Callable[[Frame], str],
    what: str,
    when: str = "in the task that entered it",
) -> Culprit | None:
    """The culprit from one stack: ``what`` it entered, left open, or not
    closed ``when`` it had to be."""
    o, managed = _walked(frames)
    if not o:
        return Culprit(frames[0], "only anyio's own frames were recorded") if frames else None
    # An iterated (or runner-driven) async generator holds everything inside
    # it across a yield: the outermost such generator decides.
    moved = [k for k in range(len(o)) if o[k].is_async_generator and not managed[k]]
    if moved:
        k = moved[-1]
        gen = o[k]
        if k + 1 < len(o):
            return Culprit(
                o[k + 1],
                f"{o[k + 1].function} drives the async generator {gen.function}, which holds "
                f"{what} open across a yield, and did not close it {when} "
                "(contextlib.aclosing)",
            )
        return Culprit(gen, f"{gen.function} holds {what} open across a yield")
    lib = package_of(o[0])
    for k in range(1, len(o)):
        frame, inner = o[k], o[k - 1]
        if frame.is_async_generator:
            continue  # a context manager's body: look further out
        if inner.is_async_generator:
            # Past a context manager's body: this frame entered it and kept it.
            return Culprit(
                frame,
                f"{frame.function} entered {inner.function}, which holds {what} open, and did "
                f"not exit it {when}",
            )
        if inner.name in ("__aenter__", "__enter__") and _with_statement(frame):
            # The caller used the context manager in a with block, which has
            # ended: the context manager's own exit left the scope open.
            return Culprit(
                inner,
                f"{frame.function} used {inner.owner or inner.function} in a with block; its "
                f"{inner.name} entered {what} and its exit did not close it",
            )
        if package_of(frame) != lib:
            return Culprit(
                frame,
                f"{frame.function} entered {_name(lib)}'s {inner.function}, which holds {what}, "
                f"and did not exit it {when}",
            )
    first = o[0]
    return Culprit(first, f"{first.function} entered {what} and did not exit it {when}")
