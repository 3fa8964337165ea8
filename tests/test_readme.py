"""The README's promises: its commands are what CI runs, its tables are complete."""

from __future__ import annotations

import re
from pathlib import Path

from scopetrace import semconv

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv .*?)\n```", README)


def test_two_commands_and_ci_runs_the_test_one() -> None:
    demo, tests = _commands()[:2]
    assert demo.endswith("scopetrace demo")
    assert tests.endswith("pytest")
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_every_attribute_key_is_documented() -> None:
    keys = [
        value
        for name, value in vars(semconv).items()
        if name.isupper() and isinstance(value, str) and "." in value
    ]
    missing = [key for key in keys if f"`{key}`" not in README]
    assert not missing
