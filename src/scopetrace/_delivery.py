"""Delivery: a background thread takes reports from the event loop to the sinks.

The thread that saw a violation only diagnoses it, adds the note, and hands
the report over (:meth:`Delivery.put`); spans, counters, log records and the
embedded exporters run here, where importing an SDK, reading installed
metadata, writing a file or waiting for a collector blocks nobody.

* Jobs run in the order they were put, each inside a copy of the context of
  the code that reported it, so log handlers and SDKs see the request they
  belong to (OpenTelemetry's current span, Sentry's scope).
* :meth:`tick` work (closing incidents, held-back counts, the embedded
  exporter's flush) runs at most :data:`TICK` seconds after it is due.
* The thread starts at the first report, and again after a fork (the child
  gets a new one and none of its parent's jobs).  Where no thread can start
  (interpreter shutdown), jobs run at once on the caller's thread.
* :meth:`flush` waits until everything put so far has been delivered;
  :func:`flush_all` runs at interpreter exit, bounded in time.
* The queue is bounded; a report that does not fit is counted and said once,
  never silently dropped.
"""

from __future__ import annotations

import collections
import contextvars
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable

#: Seconds between two rounds of periodic work while anything is pending.
TICK = 0.1
#: Reports that may wait at once; a storm is rate-limited long before this.
MAX_QUEUE = 10_000

Job = Callable[[], None]


class Delivery:
    def __init__(self, tick: Callable[[bool], bool], internal_error: Callable[[str], None]) -> None:
        #: ``tick(final) -> pending``: periodic work; ``final`` at flush time.
        self._tick = tick
        self._internal_error = internal_error
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[contextvars.Context, Job]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._pending = False  # tick() has work due later
        self._closed = False
        self._dropped = 0
        self._inline = False
        self._flush_wanted = False

    # -- the caller's side ----------------------------------------------------
    def put(self, job: Job) -> bool:
        """Deliver ``job`` soon, in the caller's context; False if it was refused."""
        context = contextvars.copy_context()
        with self._cond:
            if self._closed:
                return False
            if len(self._queue) >= MAX_QUEUE:
                self._dropped += 1
                if self._dropped == 1:
                    _say(f"more than {MAX_QUEUE} reports waiting; further ones are only counted")
                return False
            self._queue.append((context, job))
            if self._inline or not self._ensure_thread():
                inline = True
            else:
                inline = False
                self._cond.notify()
        if inline:
            self._drain(final=True)
        return True

    def wake(self) -> None:
        """Periodic work became due (held-back counts): make sure it runs."""
        with self._cond:
            if self._closed:
                return
            self._pending = True
            if not self._inline and self._ensure_thread():
                self._cond.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver everything put so far, close open incidents and push the
        embedded exporter; True if that finished within ``timeout`` seconds."""
        if threading.current_thread() is self._thread:
            self._drain(final=True)
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            thread = self._thread
        if thread is None or not thread.is_alive():
            self._drain(final=True)
            return True
        with self._cond:
            self._flush_wanted = True
            self._cond.notify()
            while self._queue or self._busy or self._flush_wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> bool:
        """Flush, then stop the thread."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify()
        return done

    # -- the thread -------------------------------------------------------------
    def _ensure_thread(self) -> bool:
        """With the lock held: a running thread, started if need be."""
        if self._thread is not None and self._thread.is_alive():
            return True
        thread = threading.Thread(target=self._run, name="scopetrace-delivery", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: "can't create new thread"
            self._inline = True
            return False
        self._thread = thread
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed and not self._flush_wanted:
                    if not self._cond.wait(TICK if self._pending else None):
                        break  # a tick is due
                if self._closed and not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                final = self._flush_wanted
                self._busy = True
            try:
                self._drain(final=final)
            finally:
                with self._cond:
                    self._busy = False
                    if final and not self._queue:
                        self._flush_wanted = False
                    self._cond.notify_all()

    def _drain(self, final: bool) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    break
                context, job = self._queue.popleft()
            try:
                context.run(job)
            except Exception:
                self._internal_error("delivering a report")
        try:
            pending = self._tick(final)
        except Exception:
            self._internal_error("delivering a report")
            pending = False
        with self._cond:
            self._pending = pending

    def after_fork(self) -> None:
        """In a forked child: a fresh queue and no thread (the parent's is gone)."""
        self._reset()


def _say(text: str) -> None:
    # Not warnings.warn: under -W error it would raise, and this runs while
    # the application handles anyio's error.
    try:
        print(f"scopetrace: {text}", file=sys.stderr, flush=True)
    except Exception:
        pass


_live: weakref.WeakSet[Delivery] = weakref.WeakSet()


def flush_all(timeout: float = 5.0) -> None:
    """Deliver what every live Delivery holds (at interpreter exit); bounded in time."""
    deadline = time.monotonic() + timeout
    for delivery in list(_live):
        try:
            delivery.close(max(0.0, deadline - time.monotonic()))
        except Exception:
            pass


def _after_fork_in_child() -> None:
    for delivery in list(_live):
        delivery.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
