"""Types of the C accelerator (see _speedups.c and scopetrace._record)."""

from collections.abc import Callable
from contextvars import ContextVar
from types import CodeType
from typing import Any

#: Whether this build walks CPython's private frame structs (3.11 to 3.13).
WALKS_INTERPRETER_FRAMES: int
#: PY_VERSION_HEX of the headers it was built with.
BUILT_FOR_HEX: int

def capture(
    var: ContextVar[Any], depth: int, scope: object, task: object, /
) -> tuple[Any, ...]: ...
def stop_at(code: CodeType, /) -> None: ...

# The asyncio hooks: only in GIL builds (see _backends._asyncio._c_hooks).
class HookState:
    def __init__(
        self,
        records: dict[int, Any],
        var: ContextVar[Any],
        depth: int,
        cap: int,
        on_top_enter: Callable[[Any], Any],
        on_top_exit: Callable[[Any], object],
        on_full: Callable[[], object],
        on_refused: Callable[[Any, BaseException], object],
        on_error: Callable[[str, BaseException], object],
    ) -> None: ...

class ScopeHook:
    __wrapped__: Callable[..., Any]
    def __init__(self, original: Callable[..., Any], state: HookState, is_exit: bool) -> None: ...
    def __call__(self, *args: Any) -> Any: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
