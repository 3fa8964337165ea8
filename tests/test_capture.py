"""The hot-path recorder: the C accelerator must build exactly the fallback's tuple.

Every capture here goes through :func:`enter`, which stands in for the patched
``CancelScope.__enter__``: both implementations skip that one wrapper frame
(the Python fallback also skips its own), so a record starts at whoever called
``enter``.  To compare the two implementations, both are called from the very
same instruction (a loop over them), so even ``lasti`` must agree.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import contextvars
import gc
import os
import itertools
import sys
import sysconfig
import threading
import time
import tracemalloc
import types
import weakref

import pytest

from scopetrace import _record as _capture
from scopetrace import _stacks
from scopetrace._record import CONTEXT, FRAMES_AT, SCOPE, TASK, TIME, _py_capture

try:
    from scopetrace._speedups import capture as c_capture
except ImportError:
    c_capture = None

needs_c = pytest.mark.skipif(c_capture is None, reason="scopetrace._speedups is not built")


@pytest.mark.skipif(
    os.environ.get("SCOPETRACE_TEST_REQUIRE_SPEEDUPS") != "1",
    reason="the accelerator is optional; CI sets SCOPETRACE_TEST_REQUIRE_SPEEDUPS=1",
)
def test_ci_builds_and_uses_the_accelerator() -> None:
    """Regression: a compile error in _speedups.c (a missing <stddef.h> on
    3.10, 3.14 and 3.15) silently left the matrix cells on those versions
    testing the pure-Python fallback, since the extension is optional."""
    assert c_capture is not None, "scopetrace._speedups did not build"
    assert _capture.capture is c_capture, "the accelerator failed its self-check"
    from scopetrace import _speedups

    # The C hooks share unsynchronised state: GIL builds only.
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert hasattr(_speedups, "ScopeHook") is not free_threaded


IMPLS = [
    pytest.param(_py_capture, id="py"),
    pytest.param(c_capture, id="c", marks=needs_c),
]

VAR: contextvars.ContextVar[object] = contextvars.ContextVar("scopetrace_test_var")


def enter(fn, var, depth, scope=None, task=None):
    """Stand-in for the patched ``__enter__``: the one frame ``capture`` skips."""
    return fn(var, depth, scope, task)


def both(var, depth):
    """C and Python records taken from the same instruction of this frame."""
    out = []
    for fn in (c_capture, _py_capture):
        out.append(enter(fn, var, depth))
    return out


def frames(record):
    return [(record[i], record[i + 1]) for i in range(FRAMES_AT, len(record), 2)]


def assert_same(c_rec, py_rec):
    assert type(c_rec) is tuple and type(py_rec) is tuple
    assert len(c_rec) == len(py_rec)
    assert c_rec[CONTEXT] is py_rec[CONTEXT]
    assert c_rec[SCOPE] is None and py_rec[SCOPE] is None
    for (c_code, c_lasti), (py_code, py_lasti) in zip(frames(c_rec), frames(py_rec)):
        assert c_code is py_code
        assert type(c_lasti) is int and c_lasti == py_lasti


def line_of(code, lasti):
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line
    raise AssertionError(f"lasti {lasti} not in {code!r}")


def nest(levels, fn):
    """Call ``fn()`` from ``levels`` fresh Python frames (fresh on every call)."""
    if levels == 0:
        return fn()
    return nest(levels - 1, fn)


# -- the two implementations agree ----------------------------------------------


@needs_c
@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 8, 16, 31, 32, 33, 100, 10_000])
def test_same_record_as_fallback(depth):
    c_rec, py_rec = both(VAR, depth)
    assert_same(c_rec, py_rec)


@needs_c
@pytest.mark.parametrize("levels", [0, 1, 5, 40])
def test_same_record_through_fresh_frames(levels):
    # New frames each time: on 3.11+ their frame objects do not exist yet and
    # are created by the walk.
    for depth in (4, 16, 64):
        assert_same(*nest(levels, lambda: both(VAR, depth)))


@needs_c
def test_same_record_in_generator_and_coroutine():
    def gen():
        yield both(VAR, 8)

    assert_same(*next(gen()))

    async def coro():
        return both(VAR, 8)

    c = coro()
    with pytest.raises(StopIteration) as stop:
        c.send(None)
    assert_same(*stop.value.value)


@needs_c
def test_same_record_under_anyio():
    anyio = pytest.importorskip("anyio")

    async def main():
        token = VAR.set("in-task")
        try:
            return both(VAR, 32)
        finally:
            VAR.reset(token)

    c_rec, py_rec = anyio.run(main)
    assert c_rec[CONTEXT] == "in-task"
    assert_same(c_rec, py_rec)


@needs_c
def test_is_the_accelerated_capture():
    assert _capture.ACCELERATED
    assert _capture.capture is c_capture


def test_fallback_when_not_built():
    if c_capture is None:
        assert not _capture.ACCELERATED
        assert _capture.capture is _py_capture


# -- frames entered from C ------------------------------------------------------
# On 3.11 to 3.13 the accelerator walks the interpreter's own frame chain, where
# a call from C into Python leaves frames CPython hides (3.12+: a C-stack entry
# frame per call from C); generator and coroutine frames are linked in only
# while they run.


@needs_c
def test_same_record_in_generator_driven_from_c():
    def gen():
        while True:
            yield both(VAR, 16)

    records = list(itertools.islice(gen(), 3))  # islice and list step it from C
    for c_rec, py_rec in records:
        assert_same(c_rec, py_rec)
        assert c_rec[FRAMES_AT] is both.__code__
        assert c_rec[FRAMES_AT + 2] is gen.__code__
        assert c_rec[FRAMES_AT + 4] is sys._getframe().f_code

    g = gen()
    next(g)
    c_rec, py_rec = g.send("resumed")  # generator.send, a C method, from here
    assert_same(c_rec, py_rec)
    assert c_rec[FRAMES_AT + 4] is sys._getframe().f_code


@needs_c
def test_same_record_through_yield_from():
    def inner():
        yield both(VAR, 16)

    def outer():
        yield from inner()

    (c_rec, py_rec), = list(outer())
    assert_same(c_rec, py_rec)
    names = [code.co_name for code, _ in frames(c_rec)[:3]]
    assert names == ["both", "inner", "outer"]


@needs_c
def test_same_record_in_callback_called_from_c():
    def key(x):
        records.append(both(VAR, 16))
        return x

    records = []
    sorted([3, 1, 2], key=key)  # key runs in a frame entered from C
    assert len(records) == 3
    for c_rec, py_rec in records:
        assert_same(c_rec, py_rec)
        assert [code.co_name for code, _ in frames(c_rec)[:3]] == [
            "both", "key", sys._getframe().f_code.co_name]


def both_through_c(depth):
    """Like :func:`both`, but the wrapper itself is called from C (``map``)."""
    out = []
    for fn in (c_capture, _py_capture):
        out.extend(map(enter, [fn], [VAR], [depth]))
    return out


@needs_c
def test_same_record_when_wrapper_is_called_from_c():
    c_rec, py_rec = both_through_c(16)
    assert_same(c_rec, py_rec)
    assert c_rec[FRAMES_AT] is both_through_c.__code__


@needs_c
def test_same_record_under_c_task_step():
    # asyncio's C Task steps the coroutine with coro.send() from C, called by
    # the loop's Handle._run.
    async def inner():
        await asyncio.sleep(0)  # a second step: resumed by a later task_step
        return both(VAR, 32)

    async def main():
        assert type(asyncio.current_task()).__module__ == "_asyncio"
        return await inner()

    c_rec, py_rec = asyncio.run(main())
    assert_same(c_rec, py_rec)
    assert [code.co_name for code, _ in frames(c_rec)[:3]] == ["both", "inner", "main"]


def _stop_here(fn):
    # A stand-in loop frame: registered for both implementations below.
    return fn()


@needs_c
def test_same_record_stops_at_loop_frame():
    _capture.stop_at_loop_frame(_stop_here.__code__)

    def site():
        return both(VAR, 32)

    c_rec, py_rec = _stop_here(site)
    assert_same(c_rec, py_rec)
    assert [code.co_name for code, _ in frames(c_rec)] == ["both", "site"]


@needs_c
def test_nothing_but_c_below():
    # A thread whose only frames are C: deque.extend consumes a map that calls
    # capture directly.  No Python frame anywhere, so no frames recorded.
    out = collections.deque()
    _thread.start_new_thread(out.extend, (map(c_capture, [VAR], [16], [None], [None]),))
    deadline = time.monotonic() + 10
    while not out:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert len(out[0]) == FRAMES_AT


def _fresh(k, fn):
    """``fn()`` under ``k`` fresh frames of small code (``lasti`` < 256: cached ints)."""
    return fn() if k == 0 else _fresh(k - 1, fn)


def _walks_interpreter_frames() -> bool:
    try:
        from scopetrace import _speedups
    except ImportError:
        return False
    return bool(getattr(_speedups, "WALKS_INTERPRETER_FRAMES", 0))


@needs_c
@pytest.mark.skipif(
    not _walks_interpreter_frames(),
    reason="this build walks frame objects (3.10, 3.16+, free-threaded builds)",
)
def test_creates_no_frame_objects():
    # On 3.11+ a function's frame object is made on demand; the public API's
    # walk made one for every frame it passed (pymalloc blocks, alive as long
    # as the frames).  The accelerator must only allocate the record: one
    # tuple and the time stamp (the lasti values are cached small ints).
    def measure():
        before = sys.getallocatedblocks()
        record = enter(c_capture, VAR, 30)
        return sys.getallocatedblocks() - before, record

    deltas = []
    for _ in range(5):  # the least of a few: another thread could allocate
        delta, record = _fresh(40, measure)
        assert len(record) == FRAMES_AT + 2 * 30
        assert all(-1 <= lasti < 256 for _, lasti in frames(record))
        deltas.append(delta)
    # Record (2 blocks) + the `before` int (1): 30 frame objects would be 33.
    assert min(deltas) <= 4, deltas


# -- shape, depth, shallow stacks -----------------------------------------------


@pytest.mark.parametrize("fn", IMPLS)
def test_shape(fn):
    before = time.time_ns()
    record = enter(fn, VAR, 6)
    after = time.time_ns()
    assert type(record) is tuple
    assert before <= record[TIME] <= after
    assert len(record) == FRAMES_AT + 2 * 6
    for code, lasti in frames(record):
        assert type(code) is types.CodeType
        assert type(lasti) is int and lasti >= 0
    # No frame object, anywhere.
    assert not any(isinstance(item, types.FrameType) for item in record)


@pytest.mark.parametrize("fn", IMPLS)
def test_starts_at_caller_of_wrapper(fn):
    def site():
        return enter(fn, VAR, 3)

    def outer():
        return site()

    record = outer()
    names = [code.co_name for code, _ in frames(record)]
    assert names == ["site", "outer", sys._getframe().f_code.co_name]


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("depth", [1, 4, 8, 16])
def test_depth_limits_frames(fn, depth):
    def recurse(n):
        if n == 0:
            return enter(fn, VAR, depth)
        return recurse(n - 1)

    record = recurse(30)
    assert len(record) == FRAMES_AT + 2 * depth
    assert all(code is recurse.__code__ for code, _ in frames(record))


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("depth", [0, -1, -(10**30)])
def test_no_frames_for_non_positive_depth(fn, depth):
    record = enter(fn, VAR, depth)
    assert len(record) == FRAMES_AT


@pytest.mark.parametrize("fn", IMPLS)
def test_huge_depth_takes_whole_stack(fn):
    record = enter(fn, VAR, 10**30)
    expected = 0
    f = sys._getframe()
    while f is not None:
        expected += 1
        f = f.f_back
    del f
    assert len(record) == FRAMES_AT + 2 * expected


def _in_bare_thread(target):
    """Run ``target`` with no Python frame below it (``_thread`` calls it from C)."""
    result = []
    done = threading.Event()

    def run():
        try:
            result.append(target())
        finally:
            done.set()

    _thread.start_new_thread(run, ())
    assert done.wait(10)
    return result[0]


@pytest.mark.parametrize("fn", IMPLS)
def test_shallow_stack(fn):
    # Stack in the thread: run -> lambda -> enter.  Asking for 16 gets 2.
    record = _in_bare_thread(lambda: enter(fn, VAR, 16))
    assert [code.co_name for code, _ in frames(record)] == ["<lambda>", "run"]


@pytest.mark.parametrize("fn", IMPLS)
def test_wrapper_is_bottom_frame(fn):
    # Nothing below the wrapper: the Python fallback's _getframe(2) raises and
    # it records no frames; the C version must agree.
    result = []
    done = threading.Event()

    def wrapper():  # plays enter(), called straight from C
        try:
            result.append(fn(VAR, 16, None, None))
        finally:
            done.set()

    _thread.start_new_thread(wrapper, ())
    assert done.wait(10)
    assert len(result[0]) == FRAMES_AT


# -- the context variable -------------------------------------------------------


@pytest.mark.parametrize("fn", IMPLS)
def test_contextvar_unset_is_none(fn):
    var = contextvars.ContextVar("unset")
    assert enter(fn, var, 1)[CONTEXT] is None


@pytest.mark.parametrize("fn", IMPLS)
def test_contextvar_default_is_ignored(fn):
    # var.get(None): the explicit None wins over the variable's own default.
    var = contextvars.ContextVar("with_default", default="dflt")
    assert enter(fn, var, 1)[CONTEXT] is None


@pytest.mark.parametrize("fn", IMPLS)
def test_contextvar_value(fn):
    var = contextvars.ContextVar("set")
    value = object()
    token = var.set(value)
    try:
        assert enter(fn, var, 1)[CONTEXT] is value
    finally:
        var.reset(token)
    assert enter(fn, var, 1)[CONTEXT] is None


@pytest.mark.parametrize("fn", IMPLS)
def test_contextvar_in_copied_context(fn):
    var = contextvars.ContextVar("ctx")

    def inside():
        var.set("inner")
        return enter(fn, var, 1)[CONTEXT]

    assert contextvars.copy_context().run(inside) == "inner"
    assert enter(fn, var, 1)[CONTEXT] is None


@needs_c
def test_bad_arguments():
    with pytest.raises(TypeError):
        c_capture("not a ContextVar", 4, None, None)
    with pytest.raises(TypeError):
        c_capture(VAR, "4", None, None)
    with pytest.raises(TypeError):
        c_capture(VAR, 4.0, None, None)
    with pytest.raises(TypeError):
        c_capture(VAR)
    with pytest.raises(TypeError):
        c_capture(VAR, 4, None, None, 5)


# -- lasti resolves to the calling line -----------------------------------------


@pytest.mark.parametrize("fn", IMPLS)
def test_lasti_resolves_to_line(fn):
    def site():
        record = enter(fn, VAR, 2); line = sys._getframe().f_lineno  # noqa: E702
        return record, line

    def outer():
        return site(), sys._getframe().f_lineno

    (record, site_line), outer_line = outer()
    (code0, lasti0), (code1, lasti1) = frames(record)
    assert code0 is site.__code__ and line_of(code0, lasti0) == site_line
    assert code1 is outer.__code__ and line_of(code1, lasti1) == outer_line
    # And through the public resolver.
    resolved = _stacks.frames_of(record[FRAMES_AT:])
    assert [f.lineno for f in resolved] == [site_line, outer_line]


@pytest.mark.parametrize("fn", IMPLS)
def test_lasti_matches_f_lasti(fn):
    def site():
        here = sys._getframe()
        record = enter(fn, VAR, 3)
        expected = []
        f = here
        for _ in range(3):
            expected.append((f.f_code, f.f_lasti))
            f = f.f_back
        return record, expected

    record, expected = site()
    got = frames(record)
    # Frame 0 has moved on since the capture; callers have not.
    assert got[0][0] is expected[0][0]
    assert got[1:] == expected[1:]


# -- nothing is kept alive, nothing leaks ----------------------------------------


@pytest.mark.parametrize("fn", IMPLS)
def test_does_not_keep_frames_or_locals(fn):
    class Local:
        pass

    def site():
        local = Local()
        return enter(fn, VAR, 4), weakref.ref(local)

    record, ref = site()
    assert ref() is None  # site's frame (and its locals) died with the call
    assert record[FRAMES_AT] is site.__code__


def _refcounts(*objs):
    return [sys.getrefcount(o) for o in objs]


@needs_c
@pytest.mark.parametrize("depth", [4, 16, 40])  # 40 > 32 uses the heap buffer
def test_no_reference_leaks(depth):
    # On a free-threaded build the code objects' counts are deferred and read
    # as equal before and after anyway; the other three objects still tell.
    value = object()
    token = VAR.set(value)
    here = sys._getframe()
    try:
        def site():
            for _ in range(100_000):
                enter(c_capture, VAR, depth)

        nest(3, site)  # warm up: frames created, caches filled
        gc.collect()
        code = nest.__code__
        before = _refcounts(value, here, code, site.__code__, VAR)
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            nest(3, site)
            gc.collect()
            end, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        after = _refcounts(value, here, code, site.__code__, VAR)
    finally:
        VAR.reset(token)
    assert after == before
    # 100k calls leaking even one small int or tuple would be megabytes.
    assert end - start < 64 * 1024


@needs_c
def test_no_leak_on_error():
    var = object()  # not a ContextVar; a plain heap object, never immortal
    before = _refcounts(var)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):
            try:
                enter(c_capture, var, 8)
            except TypeError:
                pass
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _refcounts(var) == before
    assert end - start < 64 * 1024


@needs_c
@pytest.mark.skipif(
    bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="free-threaded builds count code objects' references lazily (deferred "
    "reference counting): sys.getrefcount cannot show them",
)
def test_records_hold_code_references():
    def site():
        return enter(c_capture, VAR, 1)

    code = site.__code__
    before = sys.getrefcount(code)
    records = [site() for _ in range(1000)]
    assert sys.getrefcount(code) == before + 1000
    del records
    assert sys.getrefcount(code) == before


# -- the weak references to the scope and the task ---------------------------------


class _Scope:
    pass


@pytest.mark.parametrize("fn", IMPLS)
def test_record_refers_weakly_to_scope_and_task(fn):
    scope, task = _Scope(), _Scope()
    before = _refcounts(scope, task)
    record = enter(fn, VAR, 2, scope, task)
    assert record[SCOPE]() is scope and record[TASK]() is task
    assert _refcounts(scope, task) == before  # weak: nothing kept alive
    del scope, task
    gc.collect()
    assert record[SCOPE]() is None and record[TASK]() is None


@pytest.mark.parametrize("fn", IMPLS)
def test_objects_without_weak_references_are_recorded_as_none(fn):
    record = enter(fn, VAR, 2, 42, "a task")  # ints and strs refuse weak references
    assert record[SCOPE] is None and record[TASK] is None
    assert record[FRAMES_AT] is sys._getframe().f_code


@needs_c
def test_weak_references_do_not_leak():
    scope, task = _Scope(), _Scope()
    before = _refcounts(scope, task)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):
            enter(c_capture, VAR, 4, scope, task)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _refcounts(scope, task) == before
    assert weakref.getweakrefcount(scope) == 0  # every record's reference died with it
    assert end - start < 64 * 1024


def test_lookup_checks_the_record_belongs_to_the_scope():
    records: dict[int, tuple] = {}
    scope = _Scope()
    records[id(scope)] = _py_capture(VAR, 2, scope, None)
    assert _capture.lookup(records, scope) is records[id(scope)]
    stale = _Scope()
    records[id(stale)] = records.pop(id(scope))  # another object's record at this address
    assert _capture.lookup(records, stale) is None


def test_eviction_drops_dead_records_first_then_the_oldest():
    table = _capture.Records(cap=10)
    alive = [_Scope() for _ in range(10)]
    for scope in alive:
        table[id(scope)] = _py_capture(VAR, 0, scope, None)
    dead = [_Scope() for _ in range(5)]
    for scope in dead:
        table[id(scope)] = _py_capture(VAR, 0, scope, None)
    dead_ids = [id(s) for s in dead]
    del dead, scope
    gc.collect()
    dropped = table.evict()
    assert dropped == 5 + 1  # the excess plus a tenth of the cap
    assert not any(key in table for key in dead_ids)
    assert id(alive[0]) not in table  # then the oldest living one
    assert all(id(s) in table for s in alive[1:])


def test_eviction_is_safe_while_other_threads_insert():
    table = _capture.Records(cap=1000)
    scopes = [_Scope() for _ in range(5000)]
    stop = threading.Event()
    errors = []

    def insert():
        try:
            while not stop.is_set():
                for scope in scopes:
                    table[id(scope)] = (None, None, 0, None)
                    table.pop(id(scope), None)
        except Exception as exc:  # pragma: no cover - the failure under test
            errors.append(exc)

    threads = [threading.Thread(target=insert) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            for scope in scopes[:1500]:
                table[id(scope)] = (None, None, 0, None)
            table.evict()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(table) <= 1500
