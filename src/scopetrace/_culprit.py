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
  library that entered the scope;
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
* When every level pairs up to the end of the stacks, the outermost frame
  outside the library is the culprit: a test runner's task that ran the
  fixture (anyio's ``TestRunner``), or the fixture itself under pytest-asyncio
  (whose frames are left out: it splits setup and teardown by design).
* When the library itself delegated (its own frames do not pair up: the
  claude-agent-sdk's ``Query.start()``/``Query.close()``) and nothing outside
  it breaks, the library is the culprit.
* An async generator that spans the scope and is abandoned by its consumer
  (closed by the event loop's finalizer, or never) is culpable where it was
  dropped: the consumer's frame, the first one the closing side lacks.

With only the entering stack (an orphan warning, or the scope in the way of
a misnest) the same rules apply to one side: outwards from the scope, past
the library's own frames and the generator-based context managers, the first
frame that is neither.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _fixtures, _packages
from ._report import Culprit, Fixture
from ._stacks import Frame, is_plumbing


def _skipped(frame: Frame) -> bool:
    if _fixtures.runner_of(frame) == "anyio":
        return False  # anyio's test runner promises one task: it can be at fault
    return is_plumbing(frame.filename) or _fixtures.is_runner_frame(frame)


def _package(frame: Frame) -> str:
    """The top-level package of a frame's file; "" for the application's code."""
    place = _packages.top_level(frame.filename)
    return place[1] if place is not None else ""


def _same(a: Frame, b: Frame) -> bool:
    return a.same_function(b)


def _delegation(a: Frame, b: Frame) -> bool:
    return a.filename == b.filename and a.owner == b.owner and a.function != b.function


_COUNTERPARTS = {("__aenter__", "__aexit__"), ("__enter__", "__exit__")}


def _counterparts(a: Frame, b: Frame) -> bool:
    """The two halves of one context manager protocol."""
    return _delegation(a, b) and (a.name, b.name) in _COUNTERPARTS


def _with_statement(frame: Frame) -> bool:
    """Whether the frame's line (or one of the two before it, for a with
    statement spread over lines) is a ``with``/``async with`` statement.

    Reads the source through linecache: only in the one case the stacks
    alone cannot decide, and once per file.
    """
    import linecache

    for lineno in (frame.lineno, frame.lineno - 1, frame.lineno - 2):
        if lineno <= 0:
            break
        line = linecache.getline(frame.filename, lineno).strip()
        if line.startswith(("async with ", "with ", "async with(", "with(")):
            return True
        if lineno != frame.lineno and line.endswith((":", ")")) and not line.endswith(","):
            break  # a statement of its own ended before the frame's line
    return False


def find(
    opener: tuple[Frame, ...],
    closer: tuple[Frame, ...] | None,
    blocker: tuple[Frame, ...] | None = None,
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
        return _one_side(blocker, package_of, "the scope in the way")
    if closer is None:
        return _one_side(opener, package_of, "the scope")
    o = tuple(f for f in opener if not _skipped(f))
    c = tuple(f for f in closer if not _skipped(f))
    if not o:
        if not opener:
            return None
        return Culprit(opener[0], "only anyio's own frames were recorded when the scope was entered")
    lib = package_of(o[0])
    inside: int | None = None  # the innermost delegation within the library itself
    for k, a in enumerate(o):
        if k >= len(c):
            return Culprit(a, _reason_break(o, c, k, lib, same_task))  # the closing side ended
        b = c[k]
        if _same(a, b):
            continue
        if not _delegation(a, b):
            # A break: the two code paths part.  Inside the library, a
            # delegation found further in is the better answer.
            if package_of(a) == lib and inside is not None:
                break
            if k > 0 and _counterparts(o[k - 1], c[k - 1]) and _with_statement(a) and _with_statement(b):
                # Each side used the context manager in a with block of its
                # own: the context manager itself carried the scope from one
                # task to the other (a shared, ref-counted connection).
                inner, other = o[k - 1], c[k - 1]
                return Culprit(
                    inner,
                    f"{a.function} and {b.function} each used it in a with block, in different "
                    f"tasks; {inner.function} entered the scope for both and {other.function} "
                    "exited it in the other task",
                )
            return Culprit(a, _reason_break(o, c, k, lib, same_task))
        if package_of(a) != lib:
            return Culprit(a, _reason_delegation(o, c, k, lib, same_task))
        if inside is None:
            inside = k
    if inside is not None:
        a, b = o[inside], c[inside]
        return Culprit(a, f"{_name(lib)}'s {a.function} entered it and {b.function} {_exited(same_task)}")
    # Every level paired up to the end of the stacks.
    last = o[-1]
    return Culprit(
        last, f"both tasks ran {last.function} down to the scope: {_runner_words(fixture)}"
    )


def _still_running(blocker: tuple[Frame, ...], closer: tuple[Frame, ...]) -> bool:
    """Whether the frame that entered the blocking scope is on the exiting
    stack, with the same callers at the same lines: the block is still open."""
    inner = next((f for f in blocker if not _skipped(f)), None)
    if inner is None:
        return False
    outer = blocker[blocker.index(inner) + 1:]
    for i, frame in enumerate(closer):
        if frame.same_function(inner):
            return all(
                a.same_function(b) and a.lineno == b.lineno for a, b in zip(outer, closer[i + 1:])
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


def _reason_delegation(
    o: tuple[Frame, ...], c: tuple[Frame, ...], k: int, lib: str, same_task: bool
) -> str:
    inner = o[k - 1] if k > 0 else o[0]
    return f"{o[k].function} entered {_name(lib)}'s {inner.function} and {c[k].function} {_exited(same_task)}"


def _reason_break(
    o: tuple[Frame, ...], c: tuple[Frame, ...], k: int, lib: str, same_task: bool
) -> str:
    inner = o[k - 1] if k > 0 else None
    if k >= len(c):
        if inner is not None and inner.is_async_generator:
            return (
                f"the async generator {inner.function} held the scope across a yield; "
                f"{o[k].function} stopped iterating it without closing it (contextlib.aclosing)"
            )
        return f"{o[k].function} entered it; the task that exited it never ran this code"
    what = f"{_name(lib)}'s {inner.function}" if inner is not None else "the scope"
    return f"{o[k].function} entered {what}, and {c[k].function} {_exited(same_task)}"


def _one_side(frames: tuple[Frame, ...], package_of: Callable[[Frame], str], what: str) -> Culprit | None:
    o = tuple(f for f in frames if not _skipped(f))
    if not o:
        return Culprit(frames[0], "only anyio's own frames were recorded") if frames else None
    lib = package_of(o[0])
    for k in range(1, len(o)):
        frame, inner = o[k], o[k - 1]
        if frame.is_async_generator:
            continue  # a context manager's body, or a generator iterated further out
        if inner.is_async_generator:
            # Past a generator: this frame holds it (entered the context
            # manager, or iterates it) beyond the generator's own frames.
            verb = "iterates" if package_of(inner) != package_of(frame) or not lib else "entered"
            return Culprit(
                frame,
                f"{frame.function} {verb} {inner.function}, which holds {what} open across a "
                "yield, and did not close it in the task that entered it",
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
                "and did not exit it in the task that entered it",
            )
    first = o[0]
    if first.is_async_generator:
        return Culprit(o[-1], f"{o[-1].function} holds {what} open across a yield")
    return Culprit(first, f"{first.function} entered {what} and did not exit it in the same task")
