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
import sys
from typing import Any

from ._report import Fixture
from ._stacks import Frame
from ._text import clean

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
    in another task; None unless both stacks show the same fixture.

    Its name is pytest's (``@pytest.fixture(name=...)`` may differ from the
    function's), read from pytest's own frame outside the event loop while it
    runs the setup or the teardown, else the function's name.
    """
    if not closer:
        # An orphan warning: the setup's task ended with the scope open.
        found = _fixture_frame(opener)
    else:
        found = _fixture_frame(opener)
        exited = _fixture_frame(closer)
        if found is None or exited is None or not found[0].same_function(exited[0]):
            return None
    if found is None:
        return None
    return Fixture(live_name() or found[0].name, found[1])


_PYTEST_FIXTURES = os.path.join("_pytest", "fixtures.py")


def live_name() -> str | None:
    """The ``argname`` of the fixture pytest is setting up or tearing down on
    this thread (``FixtureDef.execute``/``finish``), if any.  Reads that one
    attribute of that one frame, and keeps nothing."""
    if "_pytest.fixtures" not in sys.modules:
        return None
    frame: Any = sys._getframe(1)
    try:
        while frame is not None:
            code = frame.f_code
            if code.co_name in ("execute", "finish") and code.co_filename.endswith(
                _PYTEST_FIXTURES
            ):
                name = getattr(frame.f_locals.get("self"), "argname", None)
                if isinstance(name, str):
                    return clean(name)
            frame = frame.f_back
    finally:
        del frame
    return None


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
