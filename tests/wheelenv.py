"""A wheel of this checkout, installed into a fresh venv: built once per session.

The wheel is built the way a release is, from an sdist (``python -m build``),
in a copy of the checkout so that a test run leaves nothing in the tree, and
installed with ``pip install 'scopetrace[otlp,instrumentation]'`` into a venv
of its own: what an operator's ``pip install`` gives, not the editable install
the test suite itself runs from.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from .programs import APP

ROOT = Path(__file__).resolve().parent.parent

#: What a release is built from.
_SOURCES = ("src", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build")

#: Variables that would make the venv's Python behave unlike a clean one.
_SCRUBBED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


@dataclasses.dataclass(frozen=True)
class WheelEnv:
    venv: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def site_packages(self) -> Path:
        out = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, env=self.env(),
        )
        return Path(out.stdout.strip())

    def env(self, extra: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
        """A clean environment: no SCOPETRACE* or OTEL_* from the test run's own."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith(("SCOPETRACE", "OTEL_"))
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra or {})
        env.update(more)
        return env

    def run(
        self, *argv: str | Path, env: Mapping[str, str] | None = None, timeout: float = 120,
        cwd: Path | None = None, **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv (``python``, ``scopetrace``, ...), capturing text."""
        first, *rest = (str(a) for a in argv)
        exe = str(self.bin / first) if (self.bin / first).exists() else first
        return subprocess.run(
            [exe, *rest], env=self.env(env), capture_output=True, text=True,
            timeout=timeout, cwd=cwd, **kwargs,
        )


_lock = threading.Lock()
_built: WheelEnv | None = None


def _check(argv: list[str], **kwargs: Any) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def wheel_env(workdir: Path) -> WheelEnv:
    """Build the wheel and its venv under ``workdir`` once; later calls reuse them."""
    global _built
    with _lock:
        if _built is not None:
            return _built
        tree = workdir / "checkout"
        tree.mkdir(parents=True)
        for name in _SOURCES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, tree / name, ignore=_IGNORE)
            elif source.exists():
                shutil.copy2(source, tree / name)
        dist = workdir / "dist"
        _check([sys.executable, "-m", "build", "--outdir", str(dist), str(tree)], timeout=600)
        (wheel,) = dist.glob("scopetrace-*.whl")
        venv = workdir / "venv"
        _check([sys.executable, "-m", "venv", str(venv)], timeout=300)
        _check(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
             f"scopetrace[otlp,instrumentation] @ {wheel.as_uri()}"],
            timeout=600,
        )
        _built = WheelEnv(venv, wheel)
        return _built


# -- fixtures, for the test modules that import them ---------------------------------


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    """The installed wheel's venv, shared by the whole session."""
    return wheel_env(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """programs.APP as a script file."""
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path
