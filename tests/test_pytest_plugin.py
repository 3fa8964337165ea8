"""The pytest plugin, driven through pytester in real pytest subprocesses."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ("pytester",)

#: A test module whose code swallows a violation three common ways.  The
#: ordering is fixed by events: A enters the shared scope, B joins, A leaves,
#: B is the last to leave and closes A's scope.
SWALLOWING = '''
import asyncio

import anyio
import pytest


class Shared:
    """Seed 003's ref-counted connection."""

    def __init__(self):
        self.scope, self.count = None, 0

    async def __aenter__(self):
        if self.count == 0:
            self.scope = anyio.CancelScope()
            self.scope.__enter__()
        self.count += 1

    async def __aexit__(self, *exc):
        self.count -= 1
        if self.count == 0:
            self.scope.__exit__(None, None, None)


def pair():
    conn, a_in, b_in, a_out = Shared(), anyio.Event(), anyio.Event(), anyio.Event()

    async def a():
        async with conn:
            a_in.set()
            await b_in.wait()
        a_out.set()

    async def b():
        await a_in.wait()
        async with conn:
            b_in.set()
            await a_out.wait()

    return a, b


def test_gather_return_exceptions():
    async def main():
        a, b = pair()
        results = await asyncio.gather(a(), b(), return_exceptions=True)
        assert isinstance(results[1], RuntimeError)  # swallowed by the app

    asyncio.run(main())


def test_never_retrieved():
    async def main():
        a, b = pair()
        tasks = [asyncio.create_task(a()), asyncio.create_task(b())]
        await asyncio.wait(tasks)  # nobody asks for b's exception

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_except_exception(backend):
    async def main():
        a, b = pair()

        async def swallow():
            try:
                await b()
            except Exception:
                pass

        if backend == "trio":  # plain tasks, as gather() makes on asyncio
            import trio

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a)
                nursery.start_soon(swallow)
        else:
            await asyncio.gather(a(), swallow())

    anyio.run(main, backend=backend)


def test_clean():
    async def main():
        with anyio.CancelScope():
            await anyio.sleep(0)

    anyio.run(main)
'''


def test_entry_point_is_declared() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("scopetrace") == "scopetrace._pytest_plugin"


def test_fails_tests_whose_violation_was_swallowed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=SWALLOWING)
    result = pytester.runpytest_subprocess("--scopetrace", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=4)
    for name in (
        "test_gather_return_exceptions", "test_never_retrieved",
        "test_except_exception[asyncio]", "test_except_exception[trio]",
    ):
        assert f"FAILED test_app.py::{name} - scopetrace: 1 " in result.stdout.str()
    # The failure is the full report: both tasks, cause and both stacks.
    result.stdout.fnmatch_lines([
        "*scopetrace: 1 anyio cancel scope violation(s) during call*",
        "*anyio cancel scope violation: wrong_task*",
        "*entered by: task*",
        "*exited by:  task*",
        "*entering stack (most recent call last):*",
        "*test_app.py*in *__aenter__*",
    ])
    result.stdout.fnmatch_lines(["*= scopetrace =*", "*test_app.py::test_never_retrieved: 1 *"])


def test_inert_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=SWALLOWING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    result.stdout.no_fnmatch_line("*cancel scope violation*")


def test_ini_option_enables_it(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nscopetrace = true\n")
    pytester.makepyfile(test_app=SWALLOWING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "gather or clean")
    result.assert_outcomes(passed=1, failed=1)


@pytest.mark.parametrize(
    ("args", "ini"),
    [
        (("--scopetrace", "--scopetrace-warn"), ""),
        ((), "scopetrace = true\nscopetrace_warn = true\n"),
    ],
    ids=["flag", "ini"],
)
def test_warn_mode(pytester: pytest.Pytester, args: tuple[str, ...], ini: str) -> None:
    pytester.makeini("[pytest]\n" + ini)
    pytester.makepyfile(test_app=SWALLOWING)
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", "-W", "default")
    result.assert_outcomes(passed=5)
    # Four violations, four warnings (counted by their kind: other warnings,
    # such as anyio 4.7's SyntaxWarning on Python 3.14, are not ours).
    text = result.stdout.str()
    assert text.count("ScopeTraceWarning: scopetrace: 1 anyio cancel scope violation(s)") == 4
    result.stdout.fnmatch_lines([
        "*ScopeTraceWarning: scopetrace: 1 anyio cancel scope violation(s) during call*",
    ])


def test_allow_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_app=SWALLOWING.replace(
            "def test_gather_return_exceptions",
            "@pytest.mark.scopetrace_allow\ndef test_gather_return_exceptions",
        )
    )
    result = pytester.runpytest_subprocess("--scopetrace", "-p", "no:cacheprovider", "-k", "gather")
    result.assert_outcomes(passed=1)


def test_a_failing_test_gets_the_report_as_a_section(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_app=SWALLOWING + '''

def test_propagates():
    async def main():
        a, b = pair()
        await asyncio.gather(a(), b())

    asyncio.run(main())
'''
    )
    result = pytester.runpytest_subprocess(
        "--scopetrace", "-p", "no:cacheprovider", "-k", "propagates"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*RuntimeError: Attempted to exit cancel scope in a different task*",
        "*scopetrace violations (call)*",
        "*anyio cancel scope violation: wrong_task*",
    ])


#: One test leaves a scope open in a task that ends (an orphan); a later test
#: closes it from another task (the violation), as a session fixture left in a
#: dead runner task fails at the session's teardown (agronholm/anyio#1179).
ORPHAN_THEN_VIOLATION = '''
import asyncio

import anyio

LEFT = {}


def test_leaves_a_scope_open():
    async def main():
        async def opener():
            LEFT["scope"] = scope = anyio.CancelScope()
            scope.__enter__()  # and the task ends

        await asyncio.gather(opener())
        await asyncio.sleep(0)  # the task-end check runs

    asyncio.run(main())


def test_closes_it_later():
    async def main():
        async def closer():
            try:
                LEFT["scope"].__exit__(None, None, None)
            except RuntimeError:
                pass  # swallowed

        await asyncio.gather(closer())

    asyncio.run(main())
'''


def test_an_orphan_warning_is_pinned_on_its_test_and_linked_to_the_later_failure(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_app=ORPHAN_THEN_VIOLATION)
    result = pytester.runpytest_subprocess("--scopetrace", "-p", "no:cacheprovider", "-W", "default")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    # The early warning, on the test during which the task ended.
    assert "ScopeTraceWarning: scopetrace: a task ended with a cancel scope still open" in text
    assert "test_app.py::test_leaves_a_scope_open" in text.split("warnings summary", 1)[1]
    # The later failure says where it began.
    assert (
        "this scope was left open (orphaned) during test_app.py::test_leaves_a_scope_open (call)"
        in text
    )
