"""Types of the C accelerator (see _speedups.c and scopetrace._record)."""

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
