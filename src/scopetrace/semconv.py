"""Names scopetrace emits: span, event, metric and attribute keys.

These strings are a public contract: dashboards, alert rules and users' queries
depend on them, so every emitter and every test reads them from here.
"""

from __future__ import annotations

from typing import Final

#: Span (and span event) emitted for each violation.
VIOLATION_SPAN: Final = "anyio.cancel_scope.violation"
VIOLATION_EVENT: Final = "anyio.cancel_scope.violation"
#: Span / event emitted when a task ends while a scope it entered is still open.
ORPHANED_SPAN: Final = "anyio.cancel_scope.orphaned"

#: Counter of violations (attributes: kind, cause, backend, opener site).
VIOLATIONS_METRIC: Final = "anyio.cancel_scope.violations"
#: Counter of scopes left open by a task that ended.
ORPHANED_METRIC: Final = "anyio.cancel_scope.orphaned"
#: Self-telemetry: errors caught inside scopetrace's own code.
INTERNAL_ERRORS_METRIC: Final = "scopetrace.internal_errors"

#: Logger that receives one ERROR record per violation.
LOGGER_NAME: Final = "scopetrace"

# --- violation ---------------------------------------------------------------
VIOLATION_KIND: Final = "anyio.cancel_scope.violation.kind"
VIOLATION_CAUSE: Final = "anyio.cancel_scope.violation.cause"
BACKEND: Final = "anyio.backend"
SUPPRESSED: Final = "anyio.cancel_scope.suppressed"
ADVICE: Final = "anyio.cancel_scope.advice"
#: Whether the task that entered the scope was still running at exit.
OPENER_RUNNING: Final = "anyio.cancel_scope.opener.task.running"

# --- the task that entered the scope ----------------------------------------
OPENER_TASK_NAME: Final = "anyio.cancel_scope.opener.task.name"
OPENER_TASK_ID: Final = "anyio.cancel_scope.opener.task.id"
OPENER_TASK_COROUTINE: Final = "anyio.cancel_scope.opener.task.coroutine"
OPENER_STACKTRACE: Final = "anyio.cancel_scope.opener.stacktrace"
OPENER_SITE: Final = "anyio.cancel_scope.opener.site"

# --- the task that tried to exit it -----------------------------------------
CLOSER_TASK_NAME: Final = "anyio.cancel_scope.closer.task.name"
CLOSER_TASK_ID: Final = "anyio.cancel_scope.closer.task.id"
CLOSER_TASK_COROUTINE: Final = "anyio.cancel_scope.closer.task.coroutine"
CLOSER_STACKTRACE: Final = "anyio.cancel_scope.closer.stacktrace"
CLOSER_SITE: Final = "anyio.cancel_scope.closer.site"

# --- ownership context (task-group scopes) ----------------------------------
TASK_GROUP_HOST: Final = "anyio.cancel_scope.task_group.host"
TASK_GROUP_CHILDREN: Final = "anyio.cancel_scope.task_group.children"

# --- standard OpenTelemetry semantic conventions that fit --------------------
CODE_FILEPATH: Final = "code.file.path"
CODE_LINENO: Final = "code.line.number"
CODE_FUNCTION: Final = "code.function.name"
THREAD_ID: Final = "thread.id"
THREAD_NAME: Final = "thread.name"

# --- vocabularies --------------------------------------------------------------
KIND_WRONG_TASK: Final = "wrong_task"
KIND_NOT_INNERMOST: Final = "not_innermost"
KINDS: Final = (KIND_WRONG_TASK, KIND_NOT_INNERMOST)

CAUSE_ASYNCGEN_FINALIZER: Final = "asyncgen_finalizer"
CAUSE_SIBLING_TASK: Final = "sibling_task"
CAUSE_OPENER_FINISHED: Final = "opener_finished"
CAUSE_MISNESTED: Final = "misnested"
CAUSES: Final = (
    CAUSE_ASYNCGEN_FINALIZER,
    CAUSE_SIBLING_TASK,
    CAUSE_OPENER_FINISHED,
    CAUSE_MISNESTED,
)

#: Attributes put on the violations counter: low-cardinality only.
METRIC_ATTRIBUTES: Final = (VIOLATION_KIND, VIOLATION_CAUSE, BACKEND, OPENER_SITE)
