"""Verify the pydantic-ai entry of the known-bug advisor against the real releases.

    python compat/verify_pydantic_ai.py            # both venvs, then the check in each
    python compat/verify_pydantic_ai.py serve      # just the MCP tool server (prints its port)

For each of the affected (1.20.0) and the first fixed (1.92.0) release of
pydantic-ai this creates a venv under the temporary directory (reused when it
is already complete), installs scopetrace with its test extra and
``pydantic-ai-slim[mcp]`` from PyPI, and runs
``tests/test_advisor_pydantic_ai.py`` in it.  That test starts ``serve`` below
as a real MCP server on 127.0.0.1 and drives two concurrent agent runs whose
``FunctionModel`` asks for four parallel tool calls each; it expects the
violation and the advice on 1.20.0 and no violation on 1.92.0.  Exit status is
non-zero unless both runs pass (a skip counts as a failure here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST = "tests/test_advisor_pydantic_ai.py"

#: release -> pins of its time: pydantic-ai 1.20.0 predates mcp 2 (which removed
#: ``streamablehttp_client``) and the OTel API that dropped ``opentelemetry._events``.
RELEASES: dict[str, tuple[str, ...]] = {
    "1.20.0": ("mcp==1.21.2", "opentelemetry-api==1.38.0", "opentelemetry-sdk==1.38.0"),
    "1.92.0": (),
}


def serve() -> None:
    """Run the MCP tool server on a free port of 127.0.0.1 until stdin closes:
    the one of compat/culprits/pydantic_ai_shared_server.py (four tools, each
    sleeping a different time, so the calls overlap and finish out of order)."""
    sys.path.insert(0, str(REPO / "compat" / "culprits"))
    from pydantic_ai_shared_server import serve as serve_tools

    serve_tools("scopetrace-probe")


def _venv(version: str, root: Path) -> Path:
    venv = root / f"scopetrace-pai-{version}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if marker.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pins = RELEASES[version]
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[test]",
         f"pydantic-ai-slim[mcp]=={version}", *pins],
        check=True,
    )
    marker.write_text("ok\n")
    return python


def verify(root: Path) -> int:
    failures = 0
    for version in RELEASES:
        t0 = time.monotonic()
        python = _venv(version, root)
        t1 = time.monotonic()
        result = subprocess.run(
            [str(python), "-m", "pytest", TEST, "-m", "slow", "-p", "no:cacheprovider",
             "-q", "-rs"],
            cwd=REPO, capture_output=True, text=True,
        )
        t2 = time.monotonic()
        last = (result.stdout.strip().splitlines() or ["<no output>"])[-1]
        passed = result.returncode == 0 and "skipped" not in last
        print(
            f"pydantic-ai {version}: {'ok' if passed else 'FAILED'} ({last}); "
            f"venv {t1 - t0:.1f}s, test {t2 - t1:.1f}s",
            flush=True,
        )
        if not passed:
            failures += 1
            print(result.stdout[-4000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("verify", "serve"), default="verify")
    parser.add_argument(
        "--venv-root", type=Path, default=Path(tempfile.gettempdir()),
        help="directory for the two venvs (default: the temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve()
        return 0
    return verify(args.venv_root)


if __name__ == "__main__":
    sys.exit(main())
