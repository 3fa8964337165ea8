"""The README's and the docs' promises: the commands are what CI runs, the tables are complete."""

from __future__ import annotations

import re
from pathlib import Path

from scopetrace import semconv

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def _commands() -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv .*?)\n```", README)


def test_two_commands_and_ci_runs_the_test_one() -> None:
    demo, tests = _commands()[:2]
    assert demo.endswith("scopetrace demo")
    assert tests.endswith("pytest")
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_every_name_is_documented() -> None:
    """Every emitted name (semconv) is on the attributes page."""
    page = (DOCS / "attributes.md").read_text()
    names = [
        value
        for name, value in vars(semconv).items()
        if name.isupper() and isinstance(value, str) and ("." in value or "_" in value)
        and not name.startswith(("KIND_", "CAUSE_"))
    ]
    missing = [name for name in names if f"`{name}`" not in page]
    assert not missing


def test_every_cause_is_explained() -> None:
    page = (DOCS / "reports.md").read_text()
    assert all(f"| `{cause}` |" in page for cause in semconv.CAUSES)


def test_every_link_between_pages_resolves() -> None:
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).resolve().exists(), (page.name, target)


def test_the_front_door_is_short_and_free_of_jargon() -> None:
    assert len(README.splitlines()) < 160
    for word in ("seed 000", "seed 003", "seed"):
        assert word not in README.lower()


def test_every_known_bug_is_in_the_advisor_page() -> None:
    from scopetrace._advisor import known_bugs

    page = (DOCS / "advisor.md").read_text()
    for bug in known_bugs():
        assert bug.issue in page, bug.issue
