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
#include <string.h>
#include <time.h>

/* On 3.11 to 3.13 the walk reads the interpreter's own frame chain
 * (_PyInterpreterFrame), because the public API (PyEval_GetFrame,
 * PyFrame_GetBack) creates a frame object, ~450 instructions, for every frame
 * that has none yet: the wrapper's own frame on every call, and every fresh
 * frame of the stack.  That chain is private and changes with every minor
 * version, so this is only done for the versions whose layout was checked
 * against their headers; the extension is compiled per minor version (the
 * wheel is version-tagged), so the headers used are the ones of the
 * interpreter that loads it.  3.10, unknown versions (3.14+) and free-threaded
 * builds walk frame objects through the public API. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 \
    && !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED)
#  define WALK_INTERPRETER_FRAMES 1
/* The internal headers refuse to compile without it.  Defined only around
 * them, so that the rest of this file sees the public API. */
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE
#    define UNDEF_PY_BUILD_CORE
#  endif
#  include <internal/pycore_frame.h>
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

static inline int
is_loop_code(PyObject *code)
{
    int n = atomic_load_explicit(&n_loop_codes, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (loop_codes[i] == code) {
            return 1;
        }
    }
    return 0;
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
 *   walk_start()    the caller of the function that calls capture(): the
 *                   one frame skipped is that function (the __enter__ wrapper)
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
walk_start(void)
{
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *f = tstate->current_frame;
#else
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
#endif
    f = first_visible(f); /* the wrapper, as PyEval_GetFrame() finds it */
    return f == NULL ? NULL : first_visible(f->previous);
}

static inline Cursor
walk_back(Cursor f)
{
    return first_visible(f->previous);
}

static inline PyObject *
walk_code(Cursor f)
{
#if PY_VERSION_HEX >= 0x030D0000
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
walk_start(void)
{
    /* Borrowed: the innermost Python frame, i.e. the wrapper calling us. */
    PyFrameObject *frame = PyEval_GetFrame();
    return frame == NULL ? NULL : PyFrame_GetBack(frame);
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

    PyObject *head[HEAD] = {NULL, NULL, NULL, NULL};
    if ((head[0] = weak_or_none(args[2])) == NULL
        || (head[1] = weak_or_none(args[3])) == NULL
        || (head[2] = now_ns()) == NULL) {
        goto error_head;
    }
    /* An explicit Py_None default: var.get(None) ignores the var's own
     * default, and so must we. */
    if (PyContextVar_Get(args[0], Py_None, &head[3]) < 0) {
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
    Cursor frame = depth > 0 ? walk_start() : NULL;
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
        PyObject *lasti = PyLong_FromLong(walk_lasti(frame));
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
