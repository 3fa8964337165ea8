"""Interpreter start-up hook of scopetrace: ``SCOPETRACE=1`` turns tracing on.

PYTEST_DONT_REWRITE: site.py imports this module before pytest starts, and
pytest (which marks every module of a distribution with a pytest11 entry
point for assertion rewriting) would otherwise warn that it cannot rewrite
it -- an error in every test suite run with ``-W error`` / filterwarnings=error.

site.py calls :func:`start` in every Python process of an environment where
scopetrace is installed: from the ``import`` line of ``scopetrace.pth``, or, on
Pythons that implement PEP 829 (3.15+), from the entry point in
``scopetrace.start``, whose presence disables that ``import`` line.

It lives outside the ``scopetrace`` package on purpose: importing the package
costs tens of milliseconds (OpenTelemetry, asyncio), and every process pays
for this module, whether or not it is traced.  With ``SCOPETRACE`` unset it
costs one environment look-up.
"""

import os
import sys

_started = False


def start() -> None:
    """Turn scopetrace on if ``SCOPETRACE`` asks for it.  Runs once; never raises."""
    global _started
    # site.py runs the .pth of a venv's site-packages twice (once for the venv,
    # once as a prefix's site-packages), and addsitedir() runs it again.
    if _started:
        return
    _started = True
    # Fast path for the usual "off" spellings, decided without importing the
    # package; every other value is parsed (and warned about) by _activate.
    if os.environ.get("SCOPETRACE", "").strip() in ("", "0"):
        return
    try:
        from scopetrace._activate import activate

        activate()
    except Exception as exc:
        # An exception here would make site.py print a traceback and skip the
        # rest of the .pth file; the application must start either way.
        try:
            sys.stderr.write(
                f"scopetrace: SCOPETRACE is set but tracing could not start "
                f"({type(exc).__name__}: {exc}); the application runs untraced\n"
            )
        except Exception:
            pass
