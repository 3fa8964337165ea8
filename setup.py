"""Build script for the optional C accelerator; metadata lives in pyproject.toml.

``scopetrace._speedups`` is optional: if it cannot be compiled (no compiler,
no headers, an unsupported platform) the install still succeeds and
``scopetrace._capture`` falls back to pure Python.  Set
``SCOPETRACE_NO_EXTENSIONS=1`` at build time to skip it on purpose, e.g. to
test the fallback.
"""

import os
import platform

from setuptools import Extension, setup


def _extensions() -> list[Extension]:
    if os.environ.get("SCOPETRACE_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes"):
        return []
    # The extension walks CPython frame objects; other interpreters use the fallback.
    if platform.python_implementation() != "CPython":
        return []
    return [
        Extension(
            "scopetrace._speedups",
            ["src/scopetrace/_speedups.c"],
            optional=True,
        )
    ]


setup(
    ext_modules=_extensions(),
    # The C source is only needed to build; keep it out of the wheel.
    exclude_package_data={"scopetrace": ["*.c"]},
)
