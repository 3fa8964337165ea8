"""The ``scopetrace`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli_run import add_arguments as add_run_arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scopetrace",
        description="Find the task that broke an anyio cancel scope.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="run miniature reproductions of two real bugs and their fixes, traced"
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio", "all"),
        default="all",
        help="event loop backend(s) to run the demo on (default: all)",
    )
    run = sub.add_parser(
        "run",
        help="run a command with tracing on, e.g. scopetrace run -- python app.py",
        description="Run COMMAND with SCOPETRACE=1 and the given options as SCOPETRACE_* "
        "variables: every Python process it starts is traced, with no code change.",
    )
    add_run_arguments(run)
    report = sub.add_parser(
        "report",
        help="summarise a jsonl file (SCOPETRACE_EXPORTER=jsonl) by culprit, kind, cause and site",
    )
    report.add_argument(
        "files", nargs="+", metavar="FILE", help="jsonl file(s); - reads standard input"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args.backend, out=sys.stdout)
    if args.command == "run":
        from ._cli_run import run

        return run(args)
    if args.command == "report":
        from ._cli_report import report

        return report(args.files)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
