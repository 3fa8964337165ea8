"""``SCOPETRACE``, the on switch read at interpreter start-up.

The start-up hook (``_scopetrace_startup``, run by site.py) imports this module
only when the variable holds something other than empty or ``0``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ._config import BOOL, SWITCH, warn_invalid


def switched_on(environ: Mapping[str, str]) -> bool:
    """Whether ``SCOPETRACE`` says on; a value that is neither on nor off warns and means off."""
    text = environ.get(SWITCH)
    if text is None or not text.strip():
        return False
    try:
        return bool(BOOL.parse(text))
    except ValueError:
        warn_invalid(SWITCH, text, BOOL.accepted, "tracing stays off")
        return False


def activate() -> bool:
    """Install scopetrace, configured by ``SCOPETRACE_*``, if ``SCOPETRACE`` is on."""
    if not switched_on(os.environ):
        return False
    from ._install import install

    install()
    return True
