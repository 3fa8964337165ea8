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

#: Counter of violations (attributes: METRIC_ATTRIBUTES below).
VIOLATIONS_METRIC: Final = "anyio.cancel_scope.violations"
#: Counter of scopes left open by a task that ended (ORPHANED_METRIC_ATTRIBUTES).
ORPHANED_METRIC: Final = "anyio.cancel_scope.orphaned"
#: Self-telemetry: errors caught inside scopetrace's own code.
INTERNAL_ERRORS_METRIC: Final = "scopetrace.internal_errors"
#: Attribute of that counter: where the error was caught.
INTERNAL_ERROR_WHERE: Final = "scopetrace.where"

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

# --- the code to fix ----------------------------------------------------------
#: ``path:line in function`` of the frame whose code split the scope's
#: lifetime across tasks (or left it open): the code a fix has to change.
CULPRIT_SITE: Final = "anyio.cancel_scope.culprit.site"
#: Why that frame, in words.
CULPRIT_REASON: Final = "anyio.cancel_scope.culprit.reason"
#: The installed distribution that owns the culprit's file, and its version
#: (absent for the application's own code).
CULPRIT_PACKAGE: Final = "anyio.cancel_scope.culprit.package"
CULPRIT_PACKAGE_VERSION: Final = "anyio.cancel_scope.culprit.package.version"

# --- the scope in the way (not_innermost) -------------------------------------
#: The innermost scope entered after the exited one, by the same task, and
#: still open; and how many such scopes there are.
BLOCKER_SITE: Final = "anyio.cancel_scope.blocker.site"
BLOCKER_STACKTRACE: Final = "anyio.cancel_scope.blocker.stacktrace"
BLOCKER_TASK_NAME: Final = "anyio.cancel_scope.blocker.task.name"
BLOCKER_COUNT: Final = "anyio.cancel_scope.blocker.count"

# --- test fixtures ------------------------------------------------------------
#: The fixture whose setup and teardown ran in different tasks, and the
#: plugin that ran it (``pytest-asyncio`` or ``anyio``).
FIXTURE_NAME: Final = "anyio.cancel_scope.fixture.name"
FIXTURE_RUNNER: Final = "anyio.cancel_scope.fixture.runner"

# --- one failure, several reports ---------------------------------------------
#: Shared by every report (violations and orphan warnings) of one failure.
INCIDENT_ID: Final = "anyio.cancel_scope.incident.id"

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
CAUSE_FIXTURE_TEARDOWN: Final = "fixture_teardown"
CAUSES: Final = (
    CAUSE_ASYNCGEN_FINALIZER,
    CAUSE_SIBLING_TASK,
    CAUSE_OPENER_FINISHED,
    CAUSE_FIXTURE_TEARDOWN,
    CAUSE_MISNESTED,
)

#: Attributes put on the violations counter: low-cardinality only (the
#: culprit's package and version, never its site).
METRIC_ATTRIBUTES: Final = (
    VIOLATION_KIND,
    VIOLATION_CAUSE,
    BACKEND,
    OPENER_SITE,
    CULPRIT_PACKAGE,
    CULPRIT_PACKAGE_VERSION,
)
#: Attributes put on the orphaned counter.
ORPHANED_METRIC_ATTRIBUTES: Final = (BACKEND, OPENER_SITE, CULPRIT_PACKAGE, CULPRIT_PACKAGE_VERSION)

# --- Logfire: what makes the span read well there (set when logfire is imported) --
LOGFIRE_MSG: Final = "logfire.msg"
LOGFIRE_MSG_TEMPLATE: Final = "logfire.msg_template"
LOGFIRE_LEVEL_NUM: Final = "logfire.level_num"
LOGFIRE_TAGS: Final = "logfire.tags"
#: The source-location keys Logfire shows (and never scrubs): the culprit's.
LOGFIRE_CODE_FILEPATH: Final = "code.filepath"
LOGFIRE_CODE_LINENO: Final = "code.lineno"
LOGFIRE_CODE_FUNCTION: Final = "code.function"

# --- Sentry: tags (keys of at most 32 characters) and the context block ---------
SENTRY_CONTEXT: Final = "anyio_cancel_scope"
SENTRY_TAG_KIND: Final = "scopetrace.kind"
SENTRY_TAG_CAUSE: Final = "scopetrace.cause"
SENTRY_TAG_BACKEND: Final = "scopetrace.backend"
SENTRY_TAG_CULPRIT_SITE: Final = "scopetrace.culprit.site"
SENTRY_TAG_CULPRIT_PACKAGE: Final = "scopetrace.culprit.package"
SENTRY_TAG_CULPRIT_VERSION: Final = "scopetrace.culprit.version"
SENTRY_TAG_OPENER_TASK: Final = "scopetrace.opener.task"
SENTRY_TAG_CLOSER_TASK: Final = "scopetrace.closer.task"
SENTRY_TAG_INCIDENT: Final = "scopetrace.incident"
SENTRY_TAGS: Final = (
    SENTRY_TAG_KIND,
    SENTRY_TAG_CAUSE,
    SENTRY_TAG_BACKEND,
    SENTRY_TAG_CULPRIT_SITE,
    SENTRY_TAG_CULPRIT_PACKAGE,
    SENTRY_TAG_CULPRIT_VERSION,
    SENTRY_TAG_OPENER_TASK,
    SENTRY_TAG_CLOSER_TASK,
    SENTRY_TAG_INCIDENT,
)
