"""The README is the manual: every command and setting is documented there."""

from __future__ import annotations

import argparse

from conftest import ROOT

from core.cli import build_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix}{name} ")
                found.extend(nested or [f"{prefix}{name}"])
    return found


def test_every_command_is_in_the_readme() -> None:
    commands = _commands(build_parser())
    assert "plan lint" in commands
    missing = [c for c in commands if f"`python -m core {c}" not in README]
    assert missing == []


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing += [c.dest for c in action._choices_actions if not c.help]
            for sub in action.choices.values():
                missing += _undocumented(sub)
    return missing


def test_every_command_has_help() -> None:
    assert _undocumented(build_parser()) == []


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
