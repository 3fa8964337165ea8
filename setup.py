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
from setuptools.command.build_py import build_py

#: The start-up hook, installed at the top of site-packages, where site.py runs
#: it in every interpreter: scopetrace.pth's import line, and, on Python 3.15+
#: (PEP 829), scopetrace.start's entry point, which then replaces that line.
#: Both only call _scopetrace_startup.start(), which does nothing unless
#: SCOPETRACE is set.
_STARTUP_FILES = ("src/scopetrace.pth", "src/scopetrace.start")


class BuildPyWithStartupHook(build_py):
    """build_py that also puts the start-up hook files at the top of the wheel."""

    def _startup_outputs(self) -> list[str]:
        return [os.path.join(self.build_lib, os.path.basename(f)) for f in _STARTUP_FILES]

    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install has no place for them
            for src, dst in zip(_STARTUP_FILES, self._startup_outputs()):
                self.copy_file(src, dst, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if self.editable_mode else self._startup_outputs()
        return list(super().get_outputs(include_bytecode)) + extra


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
    cmdclass={"build_py": BuildPyWithStartupHook},
    ext_modules=_extensions(),
    # The C source is only needed to build; keep it out of the wheel.
    exclude_package_data={"scopetrace": ["*.c"]},
)
