"""Run a callback when a module is imported, or at once if it already was.

The backends must be patched whatever the order of ``import anyio`` and
``install()``, and ``SCOPETRACE=1`` installs before the application imports
anything.  wrapt's post-import hooks do this, but importing wrapt 2.x costs
~3.4 MiB of RSS and most of the start-up time of ``SCOPETRACE=1`` (it pulls in
inspect and importlib.metadata); this is the one piece of it scopetrace needs.

A finder placed first on ``sys.meta_path`` answers only for the watched module
names: it asks the other finders for the real spec and wraps its loader so
that the callbacks run right after the module's code has.  The module keeps
its real loader.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

Hook = Callable[[ModuleType], None]

_lock = threading.RLock()
_pending: dict[str, list[Hook]] = {}


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once ``name`` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _pending.setdefault(name, []).append(hook)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    hook(module)


def put_first() -> None:
    """Move the finder back to the front of ``sys.meta_path``.

    An import hook installed after ours (pytest's assertion rewriting, which
    loads every module of a package with a ``pytest11`` plugin -- anyio --
    itself) would otherwise answer for the watched modules first, and they
    would never be patched.  Ours asks the others for the spec anyway, so
    being first changes nothing for them.
    """
    with _lock:
        if (
            _pending
            and sys.meta_path
            and sys.meta_path[0] is not _FINDER
            and _FINDER in sys.meta_path
        ):
            sys.meta_path.remove(_FINDER)
            sys.meta_path.insert(0, _FINDER)


def _fire(name: str, module: ModuleType) -> None:
    with _lock:
        hooks = _pending.pop(name, [])
        if not _pending and _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
    for hook in hooks:
        hook(module)


# Plain classes: importlib.abc would import importlib.resources (~10 ms).
class _Finder:
    def find_spec(
        self, fullname: str, path: Any, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
        return spec


class _Loader:
    """Runs the real loader, gives the module its real loader back, then fires."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _fire(module.__name__, module)


_FINDER = _Finder()
