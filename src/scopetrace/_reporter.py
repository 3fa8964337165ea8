"""Reporter: the one pipeline every report takes, from the hook to every sink.

On the thread that saw it (:meth:`Reporter.report`), before anyio raises:

1. diagnose (:mod:`scopetrace._diagnosis`) and join an incident;
2. the note on anyio's exception, and the report attached to it;
3. the event on the span current there, while it is still recording;
4. the rate limit: a report held back is only counted.

Then, on the delivery thread (:mod:`scopetrace._delivery`), in the context of
the code that reported it:

5. the culprit's package and version, and the advice;
6. the counter, then the span;
7. per incident, once it is quiet for :data:`INCIDENT_QUIET` seconds (or at a
   flush): the log record, and the embedded exporter's console block or jsonl
   line while the application has configured no tracing;
8. the listeners (the pytest plugin), last.

Every sink and listener is guarded on its own: one that raises costs its own
output and an internal-error count, never another sink's, never the
application.
"""

from __future__ import annotations

import atexit
import contextvars
import dataclasses
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import _diagnosis, semconv
from ._config import Options, env_name, log_level_number
from ._delivery import Delivery, flush_all
from ._ratelimit import RateLimiter
from ._report import Report
from ._sinks import _jsonl, _sentry, _text
from ._sinks._otel import Signals, add_event

#: Seconds an incident stays open for more reports before its text is written.
INCIDENT_QUIET = 0.25

Listener = Callable[[Report], None]


@dataclasses.dataclass
class _Incident:
    reports: list[Report]
    #: held-back counts to put on the reports' attributes, by index
    suppressed: dict[int, int]
    exc: BaseException | None
    last: float
    #: The context of its first report (a copy): the text is written in it, so
    #: that log handlers (Sentry's, OpenTelemetry's) see the request it came from.
    context: contextvars.Context | None = None


class Reporter:
    def __init__(
        self,
        options: Options,
        internal_error: Callable[[str], None],
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        from ._incidents import Incidents

        self.options = options
        self.level = log_level_number(options)
        self.limiter = RateLimiter(options.rate_limit)
        self.incidents = Incidents()
        self.signals = Signals(options.exporter, tracer_provider, meter_provider)
        self.internal_error = internal_error
        #: Callables given each report, on the delivery thread (the pytest plugin).
        self.listeners: list[Listener] = []
        self.delivery = Delivery(self._tick, internal_error)
        _live.add(self)
        self._lock = threading.Lock()
        #: rate key -> [latest report held back, not yet counted]
        self._held: dict[tuple[str, ...], list[Any]] = {}
        #: Only the delivery thread touches these.
        self._open: dict[str, _Incident] = {}
        self._said: set[str] = set()

    # -- on the thread that saw it -------------------------------------------------
    def report(self, facts: _diagnosis.Facts, exc: BaseException | None = None) -> Report:
        """Diagnose and hand over one violation or orphan (the caller guards it)."""
        report = _diagnosis.diagnose(facts)
        told = None
        if exc is not None:
            told = _sentry.attach(exc, report, self.level)
            add_note = getattr(exc, "add_note", None)  # Python >= 3.11
            if self.options.exception_notes and add_note is not None:
                add_note(report.note())
        try:
            add_event(report, report.attributes())
        except Exception:
            self.internal_error("span event")
        suppressed = self.limiter.allow(report.rate_key())
        if suppressed is None:
            with self._lock:
                key = report.rate_key()
                first = key not in self._held
                held = self._held.setdefault(key, [report, 0])
                held[0] = report
                held[1] += 1
            if first:
                self.delivery.wake()  # counts and quiet keys need the periodic work
            if self.listeners:
                # Listeners hear every report (the pytest plugin fails a test
                # even for a violation the rate limit held back).
                self.delivery.put(lambda: self._notify(report))
            return report
        self.delivery.put(lambda: self._deliver(report, exc, told, suppressed))
        return report

    # -- on the delivery thread ------------------------------------------------------
    def _deliver(
        self, report: Report, exc: BaseException | None, told: Any, suppressed: int
    ) -> None:
        report = self._guard("enriching a report", _diagnosis.enrich, report) or report
        if told is not None:
            told.report = report
        self._guard("sentry", _sentry.install_processor)
        self._guard("counter", self.signals.count, report)
        self._guard("span", self.signals.span, report, exc, suppressed)
        incident = self._open.get(report.incident_id)
        if incident is None:
            incident = self._open[report.incident_id] = _Incident(
                [], {}, None, 0.0, contextvars.copy_context()
            )
        if suppressed:
            incident.suppressed[len(incident.reports)] = suppressed
        incident.reports.append(report)
        if exc is not None and incident.exc is None:
            incident.exc = exc
            # The report holding the exception runs in its request's context;
            # an orphan warning, often the first report, in an empty one.
            incident.context = contextvars.copy_context()
        incident.last = time.monotonic()
        self._notify(report)

    def _notify(self, report: Report) -> None:
        for listener in list(self.listeners):
            self._guard("a report listener", listener, report)

    def _tick(self, final: bool) -> bool:
        """Periodic work: write incidents that went quiet, count and tell what
        the rate limit held back.  Returns whether work is still pending."""
        now = time.monotonic()
        for incident_id, incident in list(self._open.items()):
            if final or now - incident.last >= INCIDENT_QUIET:
                del self._open[incident_id]
                if incident.context is not None:
                    self._guard("writing a report", incident.context.run, self._write, incident)
                else:
                    self._guard("writing a report", self._write, incident)
        with self._lock:
            uncounted = [(entry[0], entry[1]) for entry in self._held.values() if entry[1]]
            for entry in self._held.values():
                entry[1] = 0
        for report, n in uncounted:
            self._guard("counter", self._count_held, report, n)
        for key, n in self.limiter.quiet(0.0 if final else None):
            with self._lock:
                entry = self._held.pop(key, None)  # type: ignore[call-overload]
            if entry is not None:
                self._guard("writing a report", self._write_held_back, entry[0], n)
        if final:
            self._guard("exporting", self.signals.flush, 5.0)
        with self._lock:
            still_held = bool(self._held)
        return bool(self._open) or still_held

    def _count_held(self, report: Report, n: int) -> None:
        self.signals.count(_diagnosis.enrich(report), n)

    def _write(self, incident: _Incident) -> None:
        reports = incident.reports
        exc = incident.exc if _sentry.wants_exc_info() else None
        self._guard("log record", _text.log_incident, reports, self.level, exc)
        exporter = self._text_exporter()
        if exporter == "jsonl":
            line = _jsonl.encode(_jsonl.incident_record(reports, incident.suppressed))
            if self._append(line):
                return
            exporter = "console"
        if exporter == "console":
            _text.print_incident(reports)

    def _write_held_back(self, report: Report, count: int) -> None:
        report = _diagnosis.enrich(report)
        self._guard("log record", _text.log_incident, [report], self.level, None, 0, count)
        exporter = self._text_exporter()
        if exporter == "jsonl" and self._append(
            _jsonl.encode(_jsonl.held_back_record(report, count))
        ):
            return
        if exporter in ("jsonl", "console"):
            _text.print_held_back(report, count)

    def _text_exporter(self) -> str:
        """``console``/``jsonl`` while the application configured no tracing;
        ``otlp`` falls back to ``console`` when its SDK could not start."""
        if self.signals.app_has_tracing():
            return "none"
        exporter = self.options.exporter
        if exporter == "otlp" and self.signals.embedded() is None:
            return "console"
        return exporter

    def _append(self, line: bytes) -> bool:
        path = self.options.jsonl_path
        try:
            repaired = _jsonl.append(path, line)
        except OSError as exc:
            self._say_once(
                "jsonl",
                f"cannot append to {env_name('jsonl_path')}={path!r} ({exc}); "
                "reporting on stderr instead",
            )
            return False
        if repaired:
            self._say_once("jsonl-repair", f"{path}: {repaired}")
        return True

    def _say_once(self, key: str, text: str) -> None:
        # Not warnings.warn: under -W error it would raise, and this may run
        # while the application handles anyio's error.
        if key in self._said:
            return
        self._said.add(key)
        try:
            print(f"scopetrace: {text}", file=sys.stderr, flush=True)
        except Exception:
            pass

    def _guard(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None after counting what it raised: each sink on its own."""
        try:
            return fn(*args)
        except Exception:
            self.internal_error(where)
            return None

    # -- control ------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver everything reported so far, now."""
        return self.delivery.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, then stop the embedded exporter (at uninstall and at exit)."""
        self.delivery.close(timeout)
        self.signals.close(timeout)

    def count_internal_error(self, where: str, exc: BaseException | None) -> None:
        self.signals.count_internal_error(where, exc)


#: Reporters not yet garbage: their embedded exporters are closed at exit.
_live: weakref.WeakSet[Reporter] = weakref.WeakSet()

#: Longest scopetrace holds up interpreter exit, delivering what is pending
#: (a collector that never answers must not keep a process alive).
EXIT_TIMEOUT = 5.0


def _at_exit() -> None:
    # Registered when scopetrace is imported: with the start-up hook that is
    # the first atexit handler, which runs last, after the application's
    # own (violations often happen while the interpreter shuts down).
    deadline = time.monotonic() + EXIT_TIMEOUT
    flush_all(EXIT_TIMEOUT)
    for reporter in list(_live):  # the installed one; uninstalled ones closed already
        reporter.signals.close(max(0.1, deadline - time.monotonic()))


atexit.register(_at_exit)
_ = semconv  # names used by the sinks
