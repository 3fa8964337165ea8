/*
 * scopetrace._speedups -- the hot-path stack recorder, in C.
 *
 * capture(var, depth) builds exactly the tuple that
 * scopetrace._capture._py_capture builds:
 *
 *     (time_ns, var.get(None), code_0, lasti_0, code_1, lasti_1, ...)
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
#include <string.h>
#include <time.h>

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
static int n_loop_codes = 0;

static inline int
is_loop_code(PyObject *code)
{
    for (int i = 0; i < n_loop_codes; i++) {
        if (loop_codes[i] == code) {
            return 1;
        }
    }
    return 0;
}

/* frame.f_lasti exactly as Python reports it: a byte offset into co_code (so
 * that code.co_lines() resolves it), or -1 when no instruction has run. */
static inline int
frame_lasti(PyFrameObject *frame)
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

/* Step to the caller, dropping our reference to `frame`.  Returns a strong
 * reference or NULL.  On 3.11+ this may create the caller's frame object,
 * which can fail: NULL with an exception set is an error, NULL without one is
 * the bottom of the stack. */
static inline PyFrameObject *
step_back(PyFrameObject *frame)
{
    PyFrameObject *back = PyFrame_GetBack(frame);
    Py_DECREF(frame);
    return back;
}

PyDoc_STRVAR(capture_doc,
"capture($module, var, depth, /)\n"
"--\n"
"\n"
"Return (time_ns, var.get(None), code_0, lasti_0, ...) for at most depth\n"
"frames, innermost first, starting at the caller of the function that\n"
"calls capture().");

static PyObject *
capture(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "capture() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    /* Clamp instead of raising on huge ints: the Python loop accepts any int. */
    Py_ssize_t depth = PyNumber_AsSsize_t(args[1], NULL);
    if (depth == -1 && PyErr_Occurred()) {
        return NULL;
    }

    PyObject *stamp = now_ns();
    if (stamp == NULL) {
        return NULL;
    }
    /* An explicit Py_None default: var.get(None) ignores the var's own
     * default, and so must we. */
    PyObject *value;
    if (PyContextVar_Get(args[0], Py_None, &value) < 0) {
        Py_DECREF(stamp);
        return NULL;
    }

    /* The stack's depth is only known after walking it and a tuple's size is
     * fixed at creation, so collect the pairs first, then build the tuple
     * once, moving the references in. */
    PyObject *stack_buf[2 * STACK_FRAMES];
    PyObject **pairs = stack_buf;
    Py_ssize_t capacity = STACK_FRAMES;
    Py_ssize_t n = 0; /* frames collected; pairs[0 .. 2n) are strong refs */

    /* Borrowed: the innermost Python frame, i.e. the function calling us.
     * NULL if we are called with no Python frame at all.  On 3.11+ asking for
     * it creates its frame object, a fixed cost per call (see the benchmark),
     * so do not ask when no frame is wanted. */
    PyFrameObject *frame = depth > 0 ? PyEval_GetFrame() : NULL;
    if (frame != NULL) {
        Py_INCREF(frame);
        frame = step_back(frame); /* skip that caller (the __enter__ wrapper) */
    }
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
        PyObject *code = (PyObject *)PyFrame_GetCode(frame); /* never NULL */
        if (n_loop_codes && is_loop_code(code)) {
            Py_DECREF(code);
            break;
        }
        PyObject *lasti = PyLong_FromLong(frame_lasti(frame));
        if (lasti == NULL) {
            Py_DECREF(code);
            goto error;
        }
        pairs[2 * n] = code;
        pairs[2 * n + 1] = lasti;
        n++;
        frame = step_back(frame);
    }
    if (frame == NULL) {
        if (PyErr_Occurred()) {
            goto error;
        }
    }
    else {
        Py_DECREF(frame); /* depth reached */
        frame = NULL;
    }

    PyObject *record = PyTuple_New(2 + 2 * n);
    if (record == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(record, 0, stamp);
    PyTuple_SET_ITEM(record, 1, value);
    for (Py_ssize_t i = 0; i < 2 * n; i++) {
        PyTuple_SET_ITEM(record, 2 + i, pairs[i]);
    }
    if (pairs != stack_buf) {
        PyMem_Free(pairs);
    }
    return record;

error:
    Py_XDECREF(frame);
    for (Py_ssize_t i = 0; i < 2 * n; i++) {
        Py_DECREF(pairs[i]);
    }
    if (pairs != stack_buf) {
        PyMem_Free(pairs);
    }
    Py_DECREF(value);
    Py_DECREF(stamp);
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
    if (!is_loop_code(code)) {
        if (n_loop_codes == MAX_LOOP_FRAMES) {
            PyErr_SetString(PyExc_OverflowError, "too many loop frames");
            return NULL;
        }
        Py_INCREF(code);
        loop_codes[n_loop_codes++] = code;
    }
    Py_RETURN_NONE;
}

static PyMethodDef speedups_methods[] = {
    {"capture", (PyCFunction)(void (*)(void))capture, METH_FASTCALL, capture_doc},
    {"stop_at", (PyCFunction)stop_at, METH_O, stop_at_doc},
    {NULL, NULL, 0, NULL},
};

/* loop_codes is process-wide state holding one interpreter's objects, and it
 * is updated under the GIL: say so where the interpreter asks. */
static PyModuleDef_Slot speedups_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "scopetrace._speedups",
    .m_doc = "C accelerator for scopetrace._capture (see _py_capture there).",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
