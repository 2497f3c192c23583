"""The README is the manual: every command and setting is documented there."""

from __future__ import annotations

from conftest import ROOT

from core.cli import walk

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_command_is_in_the_readme() -> None:
    commands = [name for name, _ in walk()]
    assert "plan lint" in commands
    missing = [c for c in commands if f"`python -m core {c}" not in README]
    assert missing == []


def test_every_command_has_help() -> None:
    assert [name for name, command in walk() if not command.short_help] == []


def test_readme_opens_with_the_two_commands() -> None:
    head = README.split("## The dashboard")[0]
    assert "bash scripts/serve.sh" in head
    assert "bash scripts/check.sh" in head
    assert "bash scripts/check.sh" in (ROOT / ".ci" / "run").read_text()


def test_settings_table_is_generated_from_the_settings() -> None:
    from core.settings import settings_markdown

    start = README.index("<!-- settings:")
    table = README[README.index("\n", start) + 1 : README.index("<!-- /settings -->")]
    assert table == settings_markdown(), (
        "regenerate the table with core.settings.settings_markdown()"
    )
