"""Settings: each is read typed from ``FLYWHEEL_<NAME>`` at the moment it is read, else its
default, and a value of the wrong type is refused with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import FlywheelError
from core.settings import (
    SETTINGS,
    Flag,
    Integer,
    Number,
    Settings,
    Text,
    default_db_path,
    get_setting,
    settings,
    settings_markdown,
)

KINDS = {Flag: bool, Integer: int, Number: float, Text: str}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_has_a_typed_default_a_help_text_and_its_own_variable(name: str) -> None:
    setting = SETTINGS[name]
    assert type(setting.default) is KINDS[type(setting)]
    assert setting.help.strip().endswith((".", ")"))
    assert setting.env_var == f"FLYWHEEL_{name.upper()}"
    assert getattr(Settings, name) is setting


def test_a_value_comes_back_in_its_settings_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_MAX_RETRIES", "3")
    monkeypatch.setenv("FLYWHEEL_GATE_ALPHA", "0.01")
    monkeypatch.setenv("FLYWHEEL_AUTO_DEMO", "off")
    monkeypatch.setenv("FLYWHEEL_JUDGE_MODEL", "qwen3-8b")
    assert settings.max_retries == 3 and type(settings.max_retries) is int
    assert settings.gate_alpha == 0.01 and type(settings.gate_alpha) is float
    assert settings.auto_demo is False
    assert settings.judge_model == "qwen3-8b"
    # The look-up by name (for code that holds only a name) gives the same typed value.
    assert get_setting("max_retries") == 3 and type(get_setting("max_retries")) is int


def test_a_whole_number_is_accepted_where_a_decimal_is_expected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLYWHEEL_LOCK_TIMEOUT_S", "2")
    assert settings.lock_timeout_s == 2.0 and type(settings.lock_timeout_s) is float


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("On", True), ("0", False), ("no", False)],
)
def test_a_flag_reads_the_usual_spellings_of_on_and_off(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("FLYWHEEL_AUTO_DEMO", raw)
    assert settings.auto_demo is expected


def test_an_unset_or_empty_variable_gives_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_EVAL_CONCURRENCY", raising=False)
    assert settings.eval_concurrency == 8
    monkeypatch.setenv("FLYWHEEL_EVAL_CONCURRENCY", "")
    assert settings.eval_concurrency == 8


def test_a_change_to_the_environment_takes_effect_at_the_next_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MEMORY_MB", "256")
    assert settings.sandbox_memory_mb == 256
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MEMORY_MB", "1024")
    assert settings.sandbox_memory_mb == 1024


@pytest.mark.parametrize(
    ("variable", "raw", "kind"),
    [
        ("FLYWHEEL_MAX_RETRIES", "five", "int"),
        ("FLYWHEEL_MAX_RETRIES", "2.5", "int"),
        ("FLYWHEEL_GATE_ALPHA", "5%", "float"),
        ("FLYWHEEL_AUTO_DEMO", "maybe", "bool"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, kind: str
) -> None:
    monkeypatch.setenv(variable, raw)
    name = variable.removeprefix("FLYWHEEL_").lower()
    message = f"{variable}='{raw}' is not a valid {kind}."
    with pytest.raises(FlywheelError) as raised:
        getattr(settings, name)
    assert str(raised.value) == message
    with pytest.raises(FlywheelError, match="is not a valid"):
        get_setting(name)


def test_a_bad_value_does_not_stop_other_settings_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLYWHEEL_MAX_RETRIES", "five")
    assert settings.max_grid_cells == 100_000


def test_the_store_path_follows_flywheel_db(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLYWHEEL_DB", str(tmp_path / "x.duckdb"))
    assert default_db_path() == tmp_path / "x.duckdb"


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    table = settings_markdown()
    for setting in SETTINGS.values():
        assert f"| `{setting.env_var}` |" in table
    assert "| `FLYWHEEL_DB` | `data/flywheel.duckdb` |" in table
