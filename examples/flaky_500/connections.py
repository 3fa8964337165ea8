"""One TCP connection to the tool server, shared by concurrent tool calls.

Two implementations of the same async context manager, as in seed 003:

``RefCountedConnection`` (the bug)
    The first caller to enter connects and opens the connection's task group
    (whose cancel scope bounds the reader task); the last caller to leave
    closes it.  With four tool calls in ``asyncio.gather()``, the task that
    opened the scope is often not the one that closes it, and anyio raises
    ``RuntimeError: Attempted to exit cancel scope in a different task than it
    was entered in``: the request fails with a 500.

``OwnedConnection`` (the fix, as pydantic-ai 1.92.0 did it)
    A dedicated owner task opens the connection and its task group, parks, and
    closes both itself when the last user leaves.  Callers only borrow the
    open connection, so the order in which they enter and leave no longer
    matters.

Both count their users the same way; only who enters and exits the scope
differs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from contextlib import AsyncExitStack
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_LINE = 64 * 1024


class ToolConnectionClosed(ConnectionError):
    """The connection ended while a call was waiting for its answer."""


class _Wire:
    """Requests multiplexed over one stream; a reader task routes the answers."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()
        self._pending: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._closed = False

    async def call(self, tool: str, delay: float) -> str:
        if self._closed:
            raise ToolConnectionClosed("tool connection is closed")
        request_id = next(self._ids)
        done, box = anyio.Event(), []
        self._pending[request_id] = (done, box)
        try:
            async with self._send_lock:
                line = json.dumps({"id": request_id, "tool": tool, "delay": delay})
                await self._stream.send(line.encode() + b"\n")
            await done.wait()
        finally:
            self._pending.pop(request_id, None)
        if not box:
            raise ToolConnectionClosed(f"tool connection closed before {tool!r} answered")
        return str(box[0]["result"])

    async def read_answers(self) -> None:
        reader = BufferedByteReceiveStream(self._stream)
        try:
            while True:
                try:
                    line = await reader.receive_until(b"\n", MAX_LINE)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                        anyio.ClosedResourceError):
                    return
                answer = json.loads(line)
                slot = self._pending.get(answer["id"])
                if slot is not None:
                    slot[1].append(answer)
                    slot[0].set()
        finally:
            self._closed = True
            for done, _ in list(self._pending.values()):
                done.set()


class RefCountedConnection:
    """BUGGY: the scope is entered by the first user and exited by the last one."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._lock = anyio.Lock()
        self._users = 0
        self._stack: AsyncExitStack | None = None
        self._wire: _Wire | None = None

    async def __aenter__(self) -> RefCountedConnection:
        async with self._lock:
            if self._users == 0:
                stack = AsyncExitStack()
                stream = await stack.enter_async_context(
                    await anyio.connect_tcp(self._host, self._port)
                )
                # The task group's cancel scope is entered HERE, in whichever
                # task happened to arrive first.
                tg = await stack.enter_async_context(anyio.create_task_group())
                wire = _Wire(stream)
                tg.start_soon(wire.read_answers)
                stack.callback(tg.cancel_scope.cancel)
                self._stack, self._wire = stack, wire
            self._users += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        async with self._lock:
            self._users -= 1
            if self._users:
                return
            stack, self._stack, self._wire = self._stack, None, None
        assert stack is not None
        # ...and exited HERE, in whichever task happens to leave last.
        await stack.aclose()

    async def call(self, tool: str, delay: float) -> str:
        assert self._wire is not None, "use the connection inside 'async with'"
        return await self._wire.call(tool, delay)


class OwnedConnection:
    """FIXED: a dedicated owner task enters and exits the scope; users borrow."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._lock = anyio.Lock()
        self._users = 0
        self._owner: asyncio.Task[None] | None = None
        self._stop: anyio.Event | None = None
        self._wire: _Wire | None = None

    async def _own(self, ready: anyio.Event, stop: anyio.Event) -> None:
        try:
            async with await anyio.connect_tcp(self._host, self._port) as stream:
                async with anyio.create_task_group() as tg:
                    wire = _Wire(stream)
                    tg.start_soon(wire.read_answers)
                    self._wire = wire
                    ready.set()
                    await stop.wait()
                    tg.cancel_scope.cancel()
        finally:
            self._wire = None
            ready.set()

    async def __aenter__(self) -> OwnedConnection:
        async with self._lock:
            if self._users == 0:
                ready, self._stop = anyio.Event(), anyio.Event()
                self._owner = asyncio.create_task(
                    self._own(ready, self._stop), name="tool-connection-owner"
                )
                await ready.wait()
                if self._owner.done():  # could not connect: re-raise its error
                    owner, self._owner = self._owner, None
                    owner.result()
            self._users += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        async with self._lock:
            self._users -= 1
            if self._users:
                return
            owner, stop = self._owner, self._stop
            self._owner = self._stop = None
        assert owner is not None and stop is not None
        stop.set()
        await owner

    async def call(self, tool: str, delay: float) -> str:
        assert self._wire is not None, "use the connection inside 'async with'"
        return await self._wire.call(tool, delay)


def connection_class(fixed: bool) -> type[RefCountedConnection] | type[OwnedConnection]:
    return OwnedConnection if fixed else RefCountedConnection
