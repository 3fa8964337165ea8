"""install() / uninstall(): patch the backends whenever they are imported.

Post-import hooks (``_import_hooks``) run a callback as soon as a module is
imported, or at once if it already was, so the order of ``import anyio`` and
``install()`` does not matter.  Callbacks registered by an earlier install are
disarmed, not removed, by checking a generation number.

Lock order: the import machinery holds a module's import lock while a hook
runs, so this module's lock is never held while importing anything, or
while registering hooks (which may run one at once): a first import racing
``install()``/``uninstall()`` in another thread cannot deadlock.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ._backends import _asyncio, _trio
from ._config import Options, resolve, warn_environment
from ._import_hooks import when_imported
from ._runtime import Runtime

_BACKENDS = (_asyncio, _trio)

_lock = threading.RLock()
_runtime: Runtime | None = None
_unpatchers: list[Callable[[], None]] = []
_generation = 0


def install(*, tracer_provider: Any = None, meter_provider: Any = None, **options: Any) -> None:
    """Start tracing anyio cancel scopes.

    ``options`` override the ``SCOPETRACE_*`` environment variables (see
    docs/configuration.md); a keyword that is not an option raises
    ``TypeError``, a bad value ``ValueError`` (a bad variable only warns).
    ``tracer_provider``/``meter_provider``: where spans and counters go,
    instead of the application's global providers.  Calling it again while
    installed does nothing; call :func:`uninstall` first to change options.
    """
    global _runtime, _generation
    resolved = resolve(options)  # raises for bad keywords, before anything changes
    with _lock:
        if _runtime is not None:
            return
        runtime = Runtime(resolved, tracer_provider, meter_provider)
        _runtime = runtime
        _generation += 1
        generation = _generation
    warn_environment()
    for backend in _BACKENDS:
        when_imported(backend.MODULE, _hook(backend, generation))


def _hook(backend: Any, generation: int) -> Callable[[ModuleType], None]:
    def on_import(module: ModuleType) -> None:
        # Everything that may import runs before the lock is taken.
        runtime = _runtime
        if runtime is None or generation != _generation:
            return
        try:
            wraps_children = _anyio_wraps_children()
            _check_anyio_version()
        except Exception:
            wraps_children = False
        with _lock:
            if generation != _generation or _runtime is not runtime:
                return
            try:
                _unpatchers.append(backend.patch(module, runtime, wraps_children))
            except Exception:
                runtime.internal_error(f"patching {backend.MODULE}")

    return on_import


def _anyio_wraps_children() -> bool:
    """Whether anyio (>= 4.14) runs each task-group child inside a scope of its
    own (``TaskHandle._run_coro``): read from the module, not from a version."""
    tasks = sys.modules.get("anyio._core._tasks")
    return tasks is not None and hasattr(tasks, "TaskHandle")


_version_checked = False


def _check_anyio_version() -> None:
    """One warning when the installed anyio is older than scopetrace supports."""
    global _version_checked
    if _version_checked:
        return
    _version_checked = True
    from . import _packages
    from ._advisor import version_key
    from ._config import ANYIO_FLOOR, say

    version = _packages.version_of(("anyio",))
    try:
        old = version is not None and version_key(version) < version_key(ANYIO_FLOOR)
    except ValueError:
        old = False
    if old:
        say(
            f"anyio {version} is older than scopetrace supports (anyio>={ANYIO_FLOOR}); "
            "tracing is on, but reports may be incomplete"
        )


def uninstall() -> None:
    """Stop tracing and restore anyio's original methods exactly."""
    global _runtime, _generation
    with _lock:
        _generation += 1
        unpatchers, _unpatchers[:] = list(_unpatchers), []
        runtime, _runtime = _runtime, None
    for unpatch in reversed(unpatchers):
        unpatch()
    if runtime is not None:
        # Deliver what is pending, and stop the embedded exporter's threads.
        runtime.reporter.close()


def is_installed() -> bool:
    """Whether scopetrace is installed (``install()`` was called, or ``SCOPETRACE=1``)."""
    return _runtime is not None


def flush(timeout: float = 5.0) -> bool:
    """Deliver every report made so far to its sinks now (spans, counters, log
    records, the embedded exporter), waiting at most ``timeout`` seconds.

    Reports are delivered from a background thread within a fraction of a
    second anyway; call this before shutting down your own OpenTelemetry
    providers (an application's lifespan shutdown), or in tests.  Returns
    whether everything was delivered in time.
    """
    runtime = _runtime
    return True if runtime is None else runtime.reporter.flush(timeout)


def current_runtime() -> Runtime | None:
    return _runtime


def current_options() -> Options | None:
    return None if _runtime is None else _runtime.options
