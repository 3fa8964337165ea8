/*
 * scopetrace._speedups -- the hot-path stack recorder, in C.
 *
 * capture(var, depth, scope, task) builds exactly the tuple that
 * scopetrace._record._py_capture builds (the record layout is documented
 * there):
 *
 *     (ref(scope), ref(task), time_ns, var.get(None),
 *      code_0, lasti_0, code_1, lasti_1, ...)
 *
 * The two weak references tie the record to the scope and the task it
 * describes without keeping either alive: a record whose scope has died is
 * stale, and one whose task has died goes first when the table is evicted.
 *
 * Frames are listed innermost first, at most `depth` of them, starting at the
 * caller of the patched __enter__.  The Python fallback skips two frames
 * (itself and the __enter__ wrapper); this function has no Python frame of its
 * own, so it skips exactly one: the Python function that called it.
 *
 * Only code objects (strong references) and ints go into the tuple: keeping a
 * frame would keep every local of every caller alive for as long as the
 * record lives.
 *
 * It is only called on CancelScope.__enter__, so every instruction counts:
 * no Python-level calls, no temporary list, one tuple allocation.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h> /* 3.10: the frame struct, for f_lasti */
#include <stdatomic.h>
#include <stddef.h> /* offsetof */
#include <string.h>
#include <time.h>
#ifdef Py_T_OBJECT_EX
#  define SLOT_OBJECT_EX Py_T_OBJECT_EX /* 3.12+: descrobject.h */
#else
#  include <structmember.h>
#  define SLOT_OBJECT_EX T_OBJECT_EX
#endif

/* On 3.11 to 3.15 the walk reads the interpreter's own frame chain
 * (_PyInterpreterFrame), because the public API (PyEval_GetFrame,
 * PyFrame_GetBack) creates a frame object, ~450 instructions, for every frame
 * that has none yet: the wrapper's own frame on every call, and every fresh
 * frame of the stack.  On 3.14 that alone put the echo and HTTP workloads
 * over their budgets (x1.058 and x1.025: benchmarks/interpreters.py).  The
 * chain is private and changes with every minor version, so this is only
 * done for the versions whose layout was checked against their headers; the
 * extension is compiled per minor version (the wheel is version-tagged), so
 * the headers used are the ones of the interpreter that loads it, and at
 * import _record.py compares one walk with the Python one and falls back on
 * any difference.  There is no supported way to walk the chain: the
 * PyUnstable_InterpreterFrame_* functions read a frame one has (their code is
 * inlined below: as calls they cost the HTTP workload another 0.4%), not the
 * link to its caller.  3.10, unknown versions (3.16+) and free-threaded builds
 * walk frame objects through the public API. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x03100000 \
    && !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED)
#  define WALK_INTERPRETER_FRAMES 1
/* The internal headers refuse to compile without it.  Defined only around
 * them, so that the rest of this file sees the public API. */
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE
#    define UNDEF_PY_BUILD_CORE
#  endif
#  if PY_VERSION_HEX >= 0x030E0000
#    include <internal/pycore_interpframe.h>
#  else
#    include <internal/pycore_frame.h>
#  endif
#  ifdef UNDEF_PY_BUILD_CORE
#    undef Py_BUILD_CORE
#    undef UNDEF_PY_BUILD_CORE
#  endif
#else
#  define WALK_INTERPRETER_FRAMES 0
#endif

#if !defined(CLOCK_REALTIME)
#error "scopetrace._speedups needs clock_gettime(CLOCK_REALTIME); the pure-Python fallback is used instead"
#endif

/* Frames recorded without touching the heap.  Real depths are 4..16; deeper
 * requests still work, by moving the buffer to the heap. */
#define STACK_FRAMES 32

/* Code objects of the event loops' task-stepping frames (asyncio's
 * Handle._run, trio's unrolled_run): the walk stops there.  What lies beyond
 * is the same for every task, and on 3.11+ each of those frames would get a
 * frame object created at every step of the loop.  Strong references, never
 * released: they are module-level functions of the loops. */
#define MAX_LOOP_FRAMES 8
static PyObject *loop_codes[MAX_LOOP_FRAMES];
/* Published count: stop_at() fills a slot, then raises the count with release
 * order; capture() reads the count with acquire order and only the slots
 * below it.  Slots are never changed once published, so readers need no lock
 * (free-threaded builds run capture() in many threads at once); writers are
 * serialised by stop_at_lock. */
static atomic_int n_loop_codes = 0;
static PyThread_type_lock stop_at_lock = NULL;
/* One bit per loop code, by address: most frames of a walk are not loop
 * frames, and one test of this word answers for them instead of a scan of
 * the table per frame (~190 instructions per record of a web request).  A
 * bit is set after its slot is published; a reader that misses a bit being
 * set walks one frame further, once. */
static atomic_uint_fast64_t loop_filter = 0;

static inline uint64_t
loop_bit(PyObject *code)
{
    uintptr_t p = (uintptr_t)code;
    return (uint64_t)1 << ((p >> 4 ^ p >> 10) & 63);
}

static inline int
is_loop_code(PyObject *code)
{
    if (!(atomic_load_explicit(&loop_filter, memory_order_relaxed) & loop_bit(code))) {
        return 0;
    }
    int n = atomic_load_explicit(&n_loop_codes, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (loop_codes[i] == code) {
            return 1;
        }
    }
    return 0;
}

/* The lasti ints of records, by offset: an offset past 256 (CPython's small
 * ints) would otherwise be a new int per frame per record, allocated here and
 * freed with the record.  Byte offsets are even; the table covers the first
 * 8 KiB of bytecode of any function.  Filled on first use and kept (bounded:
 * a few KiB of ints at most).  Filling it races without a GIL, so there the
 * ints are made each time. */
#define LASTI_INTS 4096
#ifndef Py_GIL_DISABLED
static PyObject *lasti_ints[LASTI_INTS];
#endif

static inline PyObject *
lasti_int(int lasti)
{
#ifndef Py_GIL_DISABLED
    if (lasti >= 0 && (lasti & 1) == 0 && (lasti >> 1) < LASTI_INTS) {
        PyObject **slot = &lasti_ints[lasti >> 1];
        if (*slot == NULL && (*slot = PyLong_FromLong(lasti)) == NULL) {
            return NULL;
        }
        return Py_NewRef(*slot);
    }
#endif
    return PyLong_FromLong(lasti);
}

/* Same clock as time.time_ns() on POSIX. */
static PyObject *
now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
}

/* The walk, over one of two representations of the stack.  A `Cursor` is the
 * current frame; the same five operations on both:
 *
 *   walk_start(s)   the innermost visible frame, skipping s of them:
 *                   capture() skips one (the Python __enter__ wrapper that
 *                   calls it); the C hooks have no frame and skip none
 *   walk_back(f)    the next frame out, consuming f
 *   walk_code(f)    a new reference to its code object
 *   walk_lasti(f)   frame.f_lasti exactly as Python reports it: a byte offset
 *                   into co_code (so that code.co_lines() resolves it), or -1
 *                   when no instruction has run
 *   walk_release(f) drop f when the walk stops early
 *
 * NULL is the bottom of the stack, or (public path only) an error when an
 * exception is set. */

#if WALK_INTERPRETER_FRAMES

/* Borrowed: every frame of the chain outlives this call. */
typedef _PyInterpreterFrame *Cursor;

/* Frames CPython's own walks (sys._getframe, PyFrame_GetBack, f_back) never
 * show: the C-stack entry frames of 3.12+ and frames not yet at their first
 * RESUME.  3.13's _PyFrame_IsIncomplete tests the owner first; 3.12's reaches
 * the same answer for entry frames through their shim code; testing it first
 * on both never reads a shim frame's code.  3.13's f_executable is "a code
 * object or None", and only a code object has the fields read next: anything
 * else is not a Python frame either. */
static inline int
is_hidden(_PyInterpreterFrame *f)
{
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14: interpreter-owned (entry) and C-stack frames, then anything
     * whose executable is not a code object, then not yet started. */
    if (f->owner >= FRAME_OWNED_BY_INTERPRETER) {
        return 1;
    }
    if (!PyCode_Check(PyStackRef_AsPyObjectBorrow(f->f_executable))) {
        return 1;
    }
    return _PyFrame_IsIncomplete(f);
#else
#if PY_VERSION_HEX >= 0x030C0000
    if (f->owner == FRAME_OWNED_BY_CSTACK) {
        return 1;
    }
#endif
#if PY_VERSION_HEX >= 0x030D0000
    if (!PyCode_Check(f->f_executable)) {
        return 1;
    }
#endif
    return _PyFrame_IsIncomplete(f);
#endif
}

/* The frame itself or the first visible one out from it: CPython's
 * _PyFrame_GetFirstComplete, with the stricter test above. */
static inline Cursor
first_visible(_PyInterpreterFrame *f)
{
    while (f != NULL && is_hidden(f)) {
        f = f->previous;
    }
    return f;
}

static inline Cursor
walk_start(int skip)
{
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *f = tstate->current_frame;
#else
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
#endif
    f = first_visible(f); /* the innermost, as PyEval_GetFrame() finds it */
    if (skip && f != NULL) {
        f = first_visible(f->previous);
    }
    return f;
}

static inline Cursor
walk_back(Cursor f)
{
    return first_visible(f->previous);
}

static inline PyObject *
walk_code(Cursor f)
{
#if PY_VERSION_HEX >= 0x030E0000
    /* What PyUnstable_InterpreterFrame_GetCode() does, without its call:
     * a code object (is_hidden() checked). */
    return Py_NewRef(PyStackRef_AsPyObjectBorrow(f->f_executable));
#elif PY_VERSION_HEX >= 0x030D0000
    return Py_NewRef(f->f_executable); /* a code object: is_hidden() checked */
#else
    return Py_NewRef((PyObject *)f->f_code);
#endif
}

/* PyFrame_GetLasti() and the f_lasti getter of 3.11 to 3.13: the
 * _PyInterpreterFrame_LASTI() index in code units, negative ones as -1. */
static inline int
walk_lasti(Cursor f)
{
    /* PyUnstable_InterpreterFrame_GetLasti() on 3.14+, inlined. */
    int lasti = _PyInterpreterFrame_LASTI(f);
    if (lasti < 0) {
        return -1;
    }
    return lasti * (int)sizeof(_Py_CODEUNIT);
}

#define walk_release(f) ((void)(f))
#define WALK_CAN_FAIL 0

#else /* the public API: frame objects */

/* A strong reference. */
typedef PyFrameObject *Cursor;

/* Step to the caller, dropping our reference to `frame`.  On 3.11+ this may
 * create the caller's frame object, which can fail. */
static inline Cursor
walk_back(Cursor frame)
{
    PyFrameObject *back = PyFrame_GetBack(frame);
    Py_DECREF(frame);
    return back;
}

static inline Cursor
walk_start(int skip)
{
    /* Borrowed: the innermost Python frame (the wrapper calling capture(), or
     * for the C hooks the code that entered the scope). */
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL) {
        return NULL;
    }
    if (skip) {
        return PyFrame_GetBack(frame);
    }
    return (PyFrameObject *)Py_NewRef(frame);
}

static inline PyObject *
walk_code(Cursor frame)
{
    return (PyObject *)PyFrame_GetCode(frame); /* never NULL */
}

static inline int
walk_lasti(Cursor frame)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(frame);
#else
    /* 3.10 stores an index in code units; its f_lasti getter multiplies by
     * sizeof(_Py_CODEUNIT) but passes negative values (-1) through. */
    if (frame->f_lasti < 0) {
        return -1;
    }
    return frame->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
}

#define walk_release(f) Py_XDECREF(f)
#define WALK_CAN_FAIL 1

#endif /* WALK_INTERPRETER_FRAMES */

/* A weak reference to `obj`, or None for None and for objects that cannot be
 * weakly referenced (the record then simply cannot be checked against it). */
static PyObject *
weak_or_none(PyObject *obj)
{
    if (obj != Py_None) {
        PyObject *ref = PyWeakref_NewRef(obj, NULL);
        if (ref != NULL) {
            return ref;
        }
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL;
        }
        PyErr_Clear();
    }
    return Py_NewRef(Py_None);
}

PyDoc_STRVAR(capture_doc,
"capture($module, var, depth, scope, task, /)\n"
"--\n"
"\n"
"Return (ref(scope), ref(task), time_ns, var.get(None), code_0, lasti_0, ...)\n"
"for at most depth frames, innermost first, starting at the caller of the\n"
"function that calls capture().");

/* Fixed fields before the first frame: see scopetrace._record. */
#define HEAD 4

/* The record of `scope` entered by `task`: the frames from the innermost
 * Python frame out, skipping `skip` of them (1: the Python wrapper that
 * called capture(); 0: the C hooks, which have no frame of their own). */
static PyObject *
build_record(PyObject *var, Py_ssize_t depth, int skip, PyObject *scope, PyObject *task)
{
    PyObject *head[HEAD] = {NULL, NULL, NULL, NULL};
    if ((head[0] = weak_or_none(scope)) == NULL
        || (head[1] = weak_or_none(task)) == NULL
        || (head[2] = now_ns()) == NULL) {
        goto error_head;
    }
    /* An explicit Py_None default: var.get(None) ignores the var's own
     * default, and so must we. */
    if (PyContextVar_Get(var, Py_None, &head[3]) < 0) {
        goto error_head;
    }

    /* The stack's depth is only known after walking it and a tuple's size is
     * fixed at creation, so collect the pairs first, then build the tuple
     * once, moving the references in. */
    PyObject *stack_buf[2 * STACK_FRAMES];
    PyObject **pairs = stack_buf;
    Py_ssize_t capacity = STACK_FRAMES;
    Py_ssize_t n = 0; /* frames collected; pairs[0 .. 2n) are strong refs */

    /* The public path creates the wrapper's frame object to find its caller,
     * a fixed cost per call (see the benchmark): do not start when no frame
     * is wanted. */
    Cursor frame = depth > 0 ? walk_start(skip) : NULL;
    while (frame != NULL && n < depth) {
        if (n == capacity) {
            /* Only for depth > STACK_FRAMES; PyMem_New checks the size. */
            Py_ssize_t grown = 2 * capacity;
            PyObject **bigger = PyMem_New(PyObject *, 2 * grown);
            if (bigger == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            memcpy(bigger, pairs, 2 * n * sizeof(PyObject *));
            if (pairs != stack_buf) {
                PyMem_Free(pairs);
            }
            pairs = bigger;
            capacity = grown;
        }
        PyObject *code = walk_code(frame);
        if (is_loop_code(code)) {
            Py_DECREF(code);
            break;
        }
        PyObject *lasti = lasti_int(walk_lasti(frame));
        if (lasti == NULL) {
            Py_DECREF(code);
            goto error;
        }
        pairs[2 * n] = code;
        pairs[2 * n + 1] = lasti;
        n++;
        frame = walk_back(frame);
    }
    if (frame != NULL) { /* depth reached, or a loop frame */
        walk_release(frame);
        frame = NULL;
    }
#if WALK_CAN_FAIL
    else if (PyErr_Occurred()) {
        goto error;
    }
#endif

    PyObject *record = PyTuple_New(HEAD + 2 * n);
    if (record == NULL) {
        goto error;
    }
    for (int i = 0; i < HEAD; i++) {
        PyTuple_SET_ITEM(record, i, head[i]);
    }
    for (Py_ssize_t i = 0; i < 2 * n; i++) {
        PyTuple_SET_ITEM(record, HEAD + i, pairs[i]);
    }
    if (pairs != stack_buf) {
        PyMem_Free(pairs);
    }
    return record;

error:
    walk_release(frame);
    for (Py_ssize_t i = 0; i < 2 * n; i++) {
        Py_DECREF(pairs[i]);
    }
    if (pairs != stack_buf) {
        PyMem_Free(pairs);
    }
error_head:
    for (int i = 0; i < HEAD; i++) {
        Py_XDECREF(head[i]);
    }
    return NULL;
}

static PyObject *
capture(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError,
                     "capture() takes exactly 4 arguments (%zd given)", nargs);
        return NULL;
    }
    /* Clamp instead of raising on huge ints: the Python loop accepts any int. */
    Py_ssize_t depth = PyNumber_AsSsize_t(args[1], NULL);
    if (depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return build_record(args[0], depth, 1, args[2], args[3]);
}

/* -- The asyncio hooks ------------------------------------------------------
 *
 * CancelScope.__enter__ and __exit__ on asyncio, as scopetrace._backends.
 * _asyncio's Python wrappers do them, without a Python frame of their own
 * (a frame, its call and its `try` are most of what the wrappers cost a
 * scope):
 *
 *   enter:  the original __enter__; then the record (build_record(), no
 *           frame to skip) into records[id(scope)]; evict() past the cap;
 *           at a task's top-level scope (_parent_scope None), the watcher's
 *           enter_top(task) unless the task is the one armed to its end.
 *   exit:   the original __exit__; a RuntimeError from it goes to
 *           refused(scope, exc) and then propagates unchanged; on every way
 *           out, records.pop(id(scope)); after a clean exit of a top-level
 *           scope, the watcher's exit_top(task) (anyio clears _host_task
 *           on the way out: it is read first).
 *
 * An error of the bookkeeping goes to on_error(where, exc), as the wrappers'
 * `except Exception` blocks go to internal_error(); a BaseException that is
 * not an Exception propagates, as it does through those blocks.  The rare
 * paths (eviction, the watcher, violations) stay in Python.
 *
 * A ScopeHook is a method descriptor, like a function: bound through
 * __get__, called unbound with the scope first, and it has a __dict__ so
 * that functools.update_wrapper() gives it __wrapped__, __name__, __doc__.
 * Its state (HookState.last above all) is shared and unsynchronised, so the
 * hooks exist only in GIL builds; a free-threaded build uses the wrappers.
 * ------------------------------------------------------------------------- */
#ifndef Py_GIL_DISABLED
#define HAVE_HOOKS 1

static PyObject *str_parent_scope; /* "_parent_scope", interned */
static PyObject *str_host_task;    /* "_host_task", interned */

typedef struct {
    PyObject_HEAD
    PyObject *records;      /* dict: id(scope) -> record */
    PyObject *var;          /* the OTel context ContextVar */
    Py_ssize_t depth;
    Py_ssize_t cap;         /* max_open_scopes */
    PyObject *last;         /* weakref to the task armed to its end, or NULL */
    PyObject *on_top_enter; /* enter_top(task) -> weakref | None */
    PyObject *on_top_exit;  /* exit_top(task) */
    PyObject *on_full;      /* evict() */
    PyObject *on_refused;   /* refused(scope, exc) */
    PyObject *on_error;     /* internal_error(where, exc) */
    /* The scope class whose slots were looked up (at the first scope), and
     * where its _host_task and _parent_scope slots are (-1: not a slot). */
    PyTypeObject *slots_of;
    Py_ssize_t host_at;
    Py_ssize_t parent_at;
} HookState;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;
    HookState *state;
    PyObject *dict;
} ScopeHook;

/* The pending exception, taken (3.12 keeps it as one object). */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static void
restore_exception(PyObject *exc) /* steals */
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

/* An error of the bookkeeping is set: hand an Exception to on_error and clear
 * it (0); leave any other BaseException set for the caller to propagate (-1). */
static int
hook_error(HookState *s, const char *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = take_exception();
    PyObject *r = PyObject_CallFunction(s->on_error, "sO", where, exc ? exc : Py_None);
    Py_XDECREF(exc);
    if (r == NULL) {
        PyErr_Clear(); /* internal_error never raises; be sure */
    }
    Py_XDECREF(r);
    return 0;
}

/* Is `task` the one `last` refers to? */
static inline int
is_last(HookState *s, PyObject *task)
{
    if (s->last == NULL) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj;
    if (PyWeakref_GetRef(s->last, &obj) < 0) {
        PyErr_Clear();
        return 0;
    }
    int same = obj == task;
    Py_XDECREF(obj);
    return same;
#else
    return PyWeakref_GET_OBJECT(s->last) == task;
#endif
}

/* Where `name` is stored in instances of `type`, if it is a plain object
 * slot (__slots__), else -1. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t at = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type == SLOT_OBJECT_EX
#ifdef Py_RELATIVE_OFFSET
            && !(m->flags & Py_RELATIVE_OFFSET)
#endif
        ) {
            at = m->offset;
        }
    }
    Py_DECREF(descr);
    return at;
}

/* scope.<name>, a new reference.  anyio's CancelScope has __slots__ where
 * the C hooks are used (4.16 has; 4.7 had not): four of these reads per
 * scope pair through the generic getattr cost ~450 instructions, a slot
 * read ~10.  Only instances of exactly
 * the class looked up take the short way (a subclass may define the name
 * otherwise), and an empty slot goes the long way, to raise AttributeError. */
static inline PyObject *
scope_attr(HookState *s, PyObject *scope, PyObject *name, Py_ssize_t *at)
{
    if (s->slots_of == NULL) {
        PyTypeObject *type = Py_TYPE(scope);
        s->host_at = slot_offset(type, str_host_task);
        s->parent_at = slot_offset(type, str_parent_scope);
        s->slots_of = (PyTypeObject *)Py_NewRef(type);
    }
    if (Py_TYPE(scope) == s->slots_of && *at >= 0) {
        PyObject *value = *(PyObject **)((char *)scope + *at);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(scope, name);
}

#define HOST_TASK(s, scope) scope_attr((s), (scope), str_host_task, &(s)->host_at)

/* 1 if scope._parent_scope is None, 0 if not, -1 on error. */
static inline int
is_top_level(HookState *s, PyObject *scope)
{
    PyObject *parent = scope_attr(s, scope, str_parent_scope, &s->parent_at);
    if (parent == NULL) {
        return -1;
    }
    int top = parent == Py_None;
    Py_DECREF(parent);
    return top;
}

static int
note_enter(HookState *s, PyObject *scope)
{
    PyObject *host = HOST_TASK(s, scope);
    if (host == NULL) {
        return -1;
    }
    int rc = -1;
    PyObject *key = NULL;
    PyObject *record = build_record(s->var, s->depth, 0, scope, host);
    if (record == NULL || (key = PyLong_FromVoidPtr(scope)) == NULL) { /* id(scope) */
        goto done;
    }
    if (PyDict_SetItem(s->records, key, record) < 0) {
        goto done;
    }
    if (PyDict_GET_SIZE(s->records) > s->cap) {
        PyObject *r = PyObject_CallNoArgs(s->on_full);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
    }
    if (!is_last(s, host)) {
        int top = is_top_level(s, scope);
        if (top < 0) {
            goto done;
        }
        if (top) {
            PyObject *ref = PyObject_CallOneArg(s->on_top_enter, host);
            if (ref == NULL) {
                goto done;
            }
            if (PyWeakref_CheckRef(ref)) {
                Py_XSETREF(s->last, ref);
            }
            else {
                Py_DECREF(ref);
            }
        }
    }
    rc = 0;
done:
    Py_XDECREF(key);
    Py_XDECREF(record);
    Py_DECREF(host);
    return rc;
}

/* records.pop(id(scope), None) */
static int
forget(HookState *s, PyObject *scope)
{
    PyObject *key = PyLong_FromVoidPtr(scope);
    if (key == NULL) {
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    int rc = PyDict_Pop(s->records, key, NULL);
#else
    PyObject *old = _PyDict_Pop(s->records, key, Py_None);
    int rc = old == NULL ? -1 : 0;
    Py_XDECREF(old);
#endif
    Py_DECREF(key);
    return rc < 0 ? -1 : 0;
}

static PyObject *
hook_enter(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ScopeHook *h = (ScopeHook *)self;
    PyObject *result = PyObject_Vectorcall(h->original, args, nargsf, kwnames);
    if (result == NULL || kwnames != NULL || PyVectorcall_NARGS(nargsf) != 1) {
        return result; /* anyio raised (nothing entered), or not a plain call */
    }
    if (note_enter(h->state, args[0]) < 0 && hook_error(h->state, "asyncio enter hook") < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
hook_exit(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ScopeHook *h = (ScopeHook *)self;
    HookState *s = h->state;
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) < 1) {
        return PyObject_Vectorcall(h->original, args, nargsf, kwnames);
    }
    PyObject *scope = Py_NewRef(args[0]); /* the callee may drop the caller's */
    PyObject *host = HOST_TASK(s, scope);
    if (host == NULL && hook_error(s, "asyncio exit hook") < 0) {
        Py_DECREF(scope);
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(h->original, args, nargsf, NULL);
    if (result == NULL) {
        PyObject *exc = take_exception();
        if (exc != NULL && PyErr_GivenExceptionMatches(exc, PyExc_RuntimeError)) {
            PyObject *r = PyObject_CallFunctionObjArgs(s->on_refused, scope, exc, NULL);
            if (r == NULL) {
                PyErr_Clear(); /* refused() reports its own errors */
            }
            Py_XDECREF(r);
        }
        if (forget(s, scope) < 0) {
            PyErr_Clear();
        }
        if (exc != NULL) {
            restore_exception(exc);
        }
        Py_XDECREF(host);
        Py_DECREF(scope);
        return NULL;
    }
    int failed = forget(s, scope) < 0;
    if (!failed && host != NULL && !is_last(s, host)) {
        int top = is_top_level(s, scope);
        if (top < 0) {
            failed = 1;
        }
        else if (top) {
            PyObject *r = PyObject_CallOneArg(s->on_top_exit, host);
            failed = r == NULL;
            Py_XDECREF(r);
        }
    }
    Py_XDECREF(host);
    Py_DECREF(scope);
    if (failed && hook_error(s, "asyncio exit hook") < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static int
state_traverse(HookState *s, visitproc visit, void *arg)
{
    Py_VISIT(s->records);
    Py_VISIT(s->var);
    Py_VISIT(s->last);
    Py_VISIT(s->on_top_enter);
    Py_VISIT(s->on_top_exit);
    Py_VISIT(s->on_full);
    Py_VISIT(s->on_refused);
    Py_VISIT(s->on_error);
    Py_VISIT(s->slots_of);
    return 0;
}

static int
state_clear(HookState *s)
{
    Py_CLEAR(s->records);
    Py_CLEAR(s->var);
    Py_CLEAR(s->last);
    Py_CLEAR(s->on_top_enter);
    Py_CLEAR(s->on_top_exit);
    Py_CLEAR(s->on_full);
    Py_CLEAR(s->on_refused);
    Py_CLEAR(s->on_error);
    Py_CLEAR(s->slots_of);
    return 0;
}

static void
state_dealloc(HookState *s)
{
    PyObject_GC_UnTrack(s);
    state_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
state_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"records", "var", "depth", "cap", "on_top_enter", "on_top_exit",
                             "on_full", "on_refused", "on_error", NULL};
    PyObject *records, *var, *top_enter, *top_exit, *full, *refused, *error;
    Py_ssize_t depth, cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OnnOOOOO:HookState", kwlist,
                                     &PyDict_Type, &records, &var, &depth, &cap,
                                     &top_enter, &top_exit, &full, &refused, &error)) {
        return NULL;
    }
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "var must be a ContextVar");
        return NULL;
    }
    HookState *s = (HookState *)type->tp_alloc(type, 0);
    if (s == NULL) {
        return NULL;
    }
    s->records = Py_NewRef(records);
    s->var = Py_NewRef(var);
    s->depth = depth < 0 ? 0 : depth;
    s->cap = cap;
    s->last = NULL;
    s->on_top_enter = Py_NewRef(top_enter);
    s->on_top_exit = Py_NewRef(top_exit);
    s->on_full = Py_NewRef(full);
    s->on_refused = Py_NewRef(refused);
    s->on_error = Py_NewRef(error);
    return (PyObject *)s;
}

static PyTypeObject HookState_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scopetrace._speedups.HookState",
    .tp_doc = "What the asyncio hooks share: the records, the settings, the callbacks.",
    .tp_basicsize = sizeof(HookState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = state_new,
    .tp_traverse = (traverseproc)state_traverse,
    .tp_clear = (inquiry)state_clear,
    .tp_dealloc = (destructor)state_dealloc,
};

static int
hook_traverse(ScopeHook *h, visitproc visit, void *arg)
{
    Py_VISIT(h->original);
    Py_VISIT(h->state);
    Py_VISIT(h->dict);
    return 0;
}

static int
hook_clear(ScopeHook *h)
{
    Py_CLEAR(h->original);
    Py_CLEAR(h->state);
    Py_CLEAR(h->dict);
    return 0;
}

static void
hook_dealloc(ScopeHook *h)
{
    PyObject_GC_UnTrack(h);
    hook_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *
hook_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"original", "state", "is_exit", NULL};
    PyObject *original, *state;
    int is_exit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!p:ScopeHook", kwlist, &original,
                                     &HookState_Type, &state, &is_exit)) {
        return NULL;
    }
    if (!PyCallable_Check(original)) {
        PyErr_SetString(PyExc_TypeError, "original must be callable");
        return NULL;
    }
    ScopeHook *h = (ScopeHook *)type->tp_alloc(type, 0);
    if (h == NULL) {
        return NULL;
    }
    h->vectorcall = is_exit ? hook_exit : hook_enter;
    h->original = Py_NewRef(original);
    h->state = (HookState *)Py_NewRef(state);
    h->dict = NULL;
    return (PyObject *)h;
}

/* Bound like a function: through the class, the hook itself. */
static PyObject *
hook_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyGetSetDef hook_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject ScopeHook_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scopetrace._speedups.ScopeHook",
    .tp_doc = "CancelScope.__enter__ or __exit__ on asyncio, recording in C.",
    .tp_basicsize = sizeof(ScopeHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = hook_new,
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_vectorcall_offset = offsetof(ScopeHook, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = hook_get,
    .tp_dictoffset = offsetof(ScopeHook, dict),
    .tp_getset = hook_getset,
};

static int
add_hooks(PyObject *module)
{
    if (str_parent_scope == NULL) {
        str_parent_scope = PyUnicode_InternFromString("_parent_scope");
        str_host_task = PyUnicode_InternFromString("_host_task");
        if (str_parent_scope == NULL || str_host_task == NULL) {
            return -1;
        }
    }
    if (PyType_Ready(&HookState_Type) < 0 || PyType_Ready(&ScopeHook_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "HookState", (PyObject *)&HookState_Type) < 0
        || PyModule_AddObjectRef(module, "ScopeHook", (PyObject *)&ScopeHook_Type) < 0) {
        return -1;
    }
    return 0;
}
#endif /* Py_GIL_DISABLED */

PyDoc_STRVAR(stop_at_doc,
"stop_at($module, code, /)\n"
"--\n"
"\n"
"Stop every later capture() at frames running this code object (an event\n"
"loop's task-stepping function); idempotent.");

static PyObject *
stop_at(PyObject *Py_UNUSED(module), PyObject *code)
{
    if (!PyCode_Check(code)) {
        PyErr_SetString(PyExc_TypeError, "stop_at() takes a code object");
        return NULL;
    }
    PyObject *result = Py_None;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(stop_at_lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
    if (!is_loop_code(code)) {
        int n = atomic_load_explicit(&n_loop_codes, memory_order_relaxed);
        if (n == MAX_LOOP_FRAMES) {
            PyErr_SetString(PyExc_OverflowError, "too many loop frames");
            result = NULL;
        }
        else {
            /* Never released: module-level functions of the loops. */
            loop_codes[n] = Py_NewRef(code);
            atomic_store_explicit(&n_loop_codes, n + 1, memory_order_release);
            atomic_fetch_or_explicit(&loop_filter, loop_bit(code), memory_order_release);
        }
    }
    PyThread_release_lock(stop_at_lock);
    return Py_XNewRef(result);
}

static PyMethodDef speedups_methods[] = {
    {"capture", (PyCFunction)(void (*)(void))capture, METH_FASTCALL, capture_doc},
    {"stop_at", (PyCFunction)stop_at, METH_O, stop_at_doc},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    if (stop_at_lock == NULL && (stop_at_lock = PyThread_allocate_lock()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
#ifdef HAVE_HOOKS
    if (add_hooks(module) < 0) {
        return -1;
    }
#endif
    /* Which walk this build does: scopetrace._record checks the private one
     * against the public API once, at import, and falls back on a mismatch. */
    if (PyModule_AddIntConstant(module, "WALKS_INTERPRETER_FRAMES",
                                WALK_INTERPRETER_FRAMES) < 0) {
        return -1;
    }
    /* The minor version the headers described, to compare with the
     * interpreter that loaded this build. */
    return PyModule_AddIntConstant(module, "BUILT_FOR_HEX", PY_VERSION_HEX);
}

/* loop_codes holds one interpreter's objects: one interpreter per process.
 * The shared state is the published array above (atomic count, lock for
 * writers) and nothing else, so the module needs no GIL: declaring it keeps
 * a free-threaded interpreter free-threaded when scopetrace is imported. */
static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "scopetrace._speedups",
    .m_doc = "C accelerator for scopetrace._record (see _py_capture there).",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
