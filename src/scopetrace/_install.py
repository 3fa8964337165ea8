"""install() / uninstall(): patch the backends whenever they are imported.

Post-import hooks (``_import_hooks``) run a callback as soon as a module is
imported, or at once if it already was, so the order of ``import anyio`` and
``install()`` does not matter.  Callbacks registered by an earlier install are
disarmed, not removed, by checking a generation number.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

from ._backends import _asyncio, _trio
from ._config import Options, resolve
from ._import_hooks import when_imported
from ._report import Reporter
from ._runtime import Runtime

_BACKENDS = (_asyncio, _trio)

_lock = threading.RLock()
_runtime: Runtime | None = None
_unpatchers: list[Callable[[], None]] = []
_generation = 0


def install(**options: Any) -> None:
    """Start tracing anyio cancel scopes.

    Keywords override ``SCOPETRACE_*`` environment variables (see the README's
    configuration table).  Calling it again while installed does nothing;
    call :func:`uninstall` first to change options.
    """
    global _runtime, _generation
    with _lock:
        if _runtime is not None:
            return
        runtime = Runtime(resolve(options))
        runtime.reporter = Reporter(runtime.options)
        _runtime = runtime
        _generation += 1
        for backend in _BACKENDS:
            when_imported(backend.MODULE, _hook(backend, _generation))


def _hook(backend: Any, generation: int) -> Callable[[Any], None]:
    def on_import(module: Any) -> None:
        with _lock:
            if generation != _generation or _runtime is None:
                return
            try:
                target = importlib.import_module(backend.MODULE)
                _unpatchers.append(backend.patch(target, _runtime))
            except Exception:
                _runtime.internal_error(f"patching {backend.MODULE}")

    return on_import


def uninstall() -> None:
    """Stop tracing and restore anyio's original methods exactly."""
    global _runtime, _generation
    with _lock:
        _generation += 1
        while _unpatchers:
            _unpatchers.pop()()
        if _runtime is not None:
            # Export what the embedded exporter still holds, and stop its threads.
            _runtime.reporter.sink.close()
        _runtime = None


def is_installed() -> bool:
    return _runtime is not None


def current_runtime() -> Runtime | None:
    return _runtime


def current_options() -> Options | None:
    return None if _runtime is None else _runtime.options
