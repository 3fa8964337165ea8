"""Test runners: an async fixture whose setup and teardown ran in different tasks.

pytest-asyncio runs an async generator fixture's setup (up to its ``yield``)
and its teardown (after it) as two separate tasks, by design
(pytest-dev/pytest-asyncio#1191); anyio's pytest plugin runs a test and its
fixtures in one runner task, unless that task dies (agronholm/anyio#1179).
Either way the recorded stacks show it, no matter the versions: the fixture's
own async-generator frame is the outermost frame of the task below the
runner's, and it is the same function on both sides.
"""

from __future__ import annotations

import os

from ._stacks import Frame
from ._report import Fixture

#: (runner, file suffix, qualname part) of the frames a runner drives
#: fixtures from.  pytest-asyncio's wrappers have had several names over its
#: releases; its plugin module has not moved.
_RUNNERS = (
    ("pytest-asyncio", f"pytest_asyncio{os.sep}plugin.py", ""),
    ("anyio", f"anyio{os.sep}_backends{os.sep}_asyncio.py", "TestRunner."),
    ("anyio", f"anyio{os.sep}_backends{os.sep}_trio.py", "TestRunner."),
    ("anyio", f"anyio{os.sep}pytest_plugin.py", ""),
)


def runner_of(frame: Frame) -> str | None:
    """The test runner a frame belongs to, if any."""
    for runner, suffix, part in _RUNNERS:
        if frame.filename.endswith(suffix) and part in frame.function:
            return runner
    return None


def _fixture_frame(frames: tuple[Frame, ...]) -> tuple[Frame, str] | None:
    """(the fixture's frame, runner): the innermost-first stack of a task that a
    runner started, whose frame just inside the runner's is an async generator."""
    for i, frame in enumerate(frames):
        runner = runner_of(frame)
        if runner is not None:
            if i == 0:
                return None
            inner = frames[i - 1]
            return (inner, runner) if inner.is_async_generator else None
    return None


def find(opener: tuple[Frame, ...], closer: tuple[Frame, ...]) -> Fixture | None:
    """The fixture whose setup entered the scope and whose teardown exited it
    in another task; None unless both stacks show the same fixture."""
    if not closer:
        # An orphan warning: the setup's task ended with the scope open.
        found = _fixture_frame(opener)
        return Fixture(found[0].name, found[1]) if found is not None else None
    entered, exited = _fixture_frame(opener), _fixture_frame(closer)
    if entered is None or exited is None or not entered[0].same_function(exited[0]):
        return None
    return Fixture(entered[0].name, entered[1])


def is_runner_frame(frame: Frame) -> bool:
    """Frames of pytest and of runners whose splitting is by design: never the
    code to fix (anyio's runner is not among them: it promises one task)."""
    name = frame.filename
    return any(
        part in name
        for part in (
            f"{os.sep}_pytest{os.sep}",
            f"{os.sep}pluggy{os.sep}",
            f"{os.sep}pytest_asyncio{os.sep}",
        )
    )
