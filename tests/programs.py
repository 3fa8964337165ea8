"""Programs the end-to-end tests run in fresh interpreters.

They know nothing of scopetrace: the seed bugs in miniature, as an
application would have them.
"""

from __future__ import annotations

import textwrap

#: The start of the console report of a violation.
REPORT = "scopetrace: anyio cancel scope violation:"

#: Seed 003's shared connection: the first user opens the scope, the last one
#: closes it; four concurrent tool calls, staggered so the closer is not the opener.
SHARED_CONNECTION = textwrap.dedent(
    """
    import asyncio, sys
    import anyio

    class Connection:
        scope, users = None, 0
        async def __aenter__(self):
            if self.users == 0:
                self.scope = anyio.CancelScope()
                self.scope.__enter__()
            self.users += 1
        async def __aexit__(self, *exc):
            self.users -= 1
            if self.users == 0:
                self.scope.__exit__(*exc)

    async def tool_calls():
        conn = Connection()
        async def call(i):
            async with conn:
                # asyncio (and uvloop) run expired timers in deadline order, so the
                # stagger fixes the order under any load (trio's would not: see scenarios)
                await asyncio.sleep(0.01 * (i + 1))
        return await asyncio.gather(*(call(i) for i in range(4)), return_exceptions=True)
    """
)

#: A script: prints what it caught and whether anyio's CancelScope is patched.
APP = SHARED_CONNECTION + textwrap.dedent(
    """
    from anyio._backends import _asyncio

    async def main():
        print("caught:", [str(r) for r in await tool_calls() if r is not None])

    asyncio.run(main())
    # Both of scopetrace's hooks (Python or C) wrap anyio's: only they have it.
    patched = hasattr(_asyncio.CancelScope.__enter__, "__wrapped__")
    print("patched:", patched, "scopetrace imported:", "scopetrace" in sys.modules)
    """
)

#: What APP prints of what it caught: the same with and without tracing.
UNTRACED = "caught: ['Attempted to exit cancel scope in a different task than it was entered in']\n"

#: An ASGI application: each request makes the tool calls, 500 when anyio refuses.
ASGI_APP = SHARED_CONNECTION + textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        status = 500 if any(await tool_calls()) else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    """
)

#: Seed 000 in miniature: an async generator holding a task group is dropped,
#: and the loop's finalizer closes it in a task of its own while asyncio.run()
#: shuts down, just before the process exits.
AT_SHUTDOWN = textwrap.dedent(
    """
    import asyncio, anyio

    async def query():
        async with anyio.create_task_group():
            yield 1
            yield 2

    async def main():
        agen = query()
        await agen.__anext__()

    asyncio.run(main())
    """
)
