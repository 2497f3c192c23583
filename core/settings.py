"""Settings as data: each has a name, a default, a type and a help text in one place.

A setting is read from the environment as ``FLYWHEEL_<NAME>`` (upper case) when set, else its
default, each time it is read (so a changed environment takes effect at the next read). Read one
through the typed ``settings`` object: ``settings.gate_alpha`` is a ``float``,
``settings.max_retries`` an ``int``, ``settings.auto_demo`` a ``bool``; a value in the environment
that is not of the setting's type raises FlywheelError naming the variable. The README's settings
table is generated from ``SETTINGS``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, overload

from core.errors import FlywheelError

__all__ = [
    "SETTINGS",
    "Flag",
    "Integer",
    "Number",
    "Setting",
    "Settings",
    "Text",
    "default_db_path",
    "get_setting",
    "settings",
    "settings_markdown",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Value = str | int | float | bool
T_co = TypeVar("T_co", bound=Value, covariant=True)


class Setting(ABC, Generic[T_co]):
    """One tunable value of type ``T_co``: its default and what it does; its name is the
    attribute of ``Settings`` that holds it. Read on ``settings``, it is the current value."""

    kind: ClassVar[str]

    def __init__(self, default: T_co, help: str) -> None:
        self.name = ""
        self.default = default
        self.help = help

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @property
    def env_var(self) -> str:
        """The environment variable that overrides this setting."""
        return "FLYWHEEL_" + self.name.upper()

    @abstractmethod
    def parse(self, raw: str) -> T_co:
        """The value that the text ``raw`` stands for; ValueError when it is not one."""

    def value(self) -> T_co:
        """The value now: the environment's when set (and not empty), else the default.

        Raises FlywheelError when the environment holds a value of the wrong type.
        """
        raw = os.environ.get(self.env_var)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError:
            raise FlywheelError(f"{self.env_var}={raw!r} is not a valid {self.kind}.") from None

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Setting[T_co]: ...

    @overload
    def __get__(self, instance: Settings, owner: type[Any]) -> T_co: ...

    def __get__(self, instance: Settings | None, owner: type[Any]) -> Setting[T_co] | T_co:
        return self if instance is None else self.value()


class Text(Setting[str]):
    """A setting whose value is text, taken as written."""

    kind = "str"

    def parse(self, raw: str) -> str:
        return raw


class Integer(Setting[int]):
    """A whole-number setting (``FLYWHEEL_MAX_RETRIES=3``)."""

    kind = "int"

    def parse(self, raw: str) -> int:
        return int(raw)


class Number(Setting[float]):
    """A decimal-number setting (``FLYWHEEL_GATE_ALPHA=0.01``)."""

    kind = "float"

    def parse(self, raw: str) -> float:
        return float(raw)


class Flag(Setting[bool]):
    """An on/off setting: 1, true, yes, on or 0, false, no, off (any case)."""

    kind = "bool"

    def parse(self, raw: str) -> bool:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(raw)


class Settings:
    """Every setting, typed: an attribute read on an instance (``settings.max_retries``) is the
    setting's current value; read on the class (``Settings.max_retries``) it is the Setting."""

    db = Text(
        str(PROJECT_ROOT / "data" / "flywheel.duckdb"),
        "Path of the DuckDB store.",
    )

    auto_demo = Flag(
        True,
        "Load the demo workspace when the dashboard starts on an empty store.",
    )

    lock_timeout_s = Number(
        15.0,
        "How long to retry when another process holds the store before reporting it.",
    )

    backup_key = Text(
        "",
        "Secret key that signs a backup's manifest (HMAC-SHA256); a restore with it set "
        "refuses an unsigned or altered backup. Read at run time, never stored.",
    )

    max_text_bytes = Integer(
        1_000_000,
        "Largest prompt, response or system text an ingested row may hold.",
    )

    ingest_memory_limit = Text(
        "1GB",
        "DuckDB memory limit during an ingest (e.g. 1GB); larger files spill to disk. "
        "Empty = DuckDB's default.",
    )

    generation_concurrency = Integer(
        64,
        "How many teacher requests synthetic generation keeps in flight at once (an item "
        "waiting to retry holds none). OpenAI-compatible servers (vLLM, llama.cpp, a "
        "hosted API) batch concurrent requests; lower it for a small local server or a "
        "low rate-limit tier, where 429s are retried after their Retry-After.",
    )

    max_grid_cells = Integer(
        100_000,
        "Largest generation grid (product of the axes' value counts) a plan may have; a "
        "larger one is refused before any cell is listed.",
    )

    template_max_output_chars = Integer(
        1_000_000,
        "Most characters one render of a user-written template (prompt template, judge "
        "rubric) may produce; larger renders are refused.",
    )

    student_system_max_tokens = Integer(
        400,
        "Token budget of the student's system message (goal.student_system_message): it "
        "rides in every training example and every served request, so a longer one is a "
        "lint warning (cl100k_base count, an estimate for other tokenizers).",
    )

    request_timeout_s = Number(
        60.0,
        "Timeout of one request to a model endpoint.",
    )

    max_retries = Integer(
        5,
        "Retries of one model request on 429, 5xx or a timeout.",
    )

    generation_invalid_retries = Integer(
        2,
        "Extra requests for one item whose reply is malformed or fails its schema.",
    )

    retry_backoff_s = Number(
        0.5,
        "First wait before retrying a model request; doubles each retry, with jitter.",
    )

    batch_poll_s = Number(
        15.0,
        "Seconds between status checks of an OpenAI batch job.",
    )

    teacher_base_url = Text(
        "",
        "Base URL of the teacher's OpenAI-compatible server when the plan names none "
        "(else OPENAI_BASE_URL, else OpenAI).",
    )

    teacher_api_key = Text(
        "",
        "API key of the teacher's server (else OPENAI_API_KEY); read at run time, never stored.",
    )

    ab_preperiod_days = Integer(
        14,
        "Days before an A/B test's start whose interactions form the CUPED pre-period.",
    )

    eval_concurrency = Integer(
        8,
        "How many model requests an eval run keeps in flight at once.",
    )

    eval_api_key = Text(
        "",
        "API key of the evaluated models' and the judge's server (else OPENAI_API_KEY); "
        "read at run time, never stored.",
    )

    judge_model = Text(
        "gpt-4o",
        "Model that grades outputs with the llm_judge rubric.",
    )

    judge_base_url = Text(
        "",
        "Base URL of the judge's OpenAI-compatible server (else OPENAI_BASE_URL, else OpenAI).",
    )

    sandbox_timeout_s = Number(
        10.0,
        "Seconds a code item's sandbox may run (start, code and tests) before it is killed.",
    )

    sandbox_memory_mb = Integer(
        512,
        "Address-space limit, MB, of each of a code item's sandboxed processes.",
    )

    sandbox_max_processes = Integer(
        32,
        "Most processes (and threads) a code item's sandbox may hold at once.",
    )

    sandbox_disk_mb = Integer(
        64,
        "Size, MB, of a code item's private scratch directory (the sandbox's only writable place).",
    )

    gate_min_items = Integer(
        30,
        "Fewest paired items a gate needs before it can pass or fail (else insufficient data).",
    )

    gate_alpha = Number(
        0.05,
        "Significance level of the gates' tests (one-sided where so).",
    )

    training_poll_s = Number(
        10.0,
        "Seconds between status checks of a fine-tuning job.",
    )

    training_dir = Text(
        "",
        "Folder of local training jobs (their checkpoints, metrics and weights); empty = "
        "a training/ folder beside the store.",
    )

    audit_key = Text(
        "",
        "Secret key of the audit log's erasure entries (HMAC-SHA256 of a forgotten user id); "
        "read at run time, never stored. Empty = a key file beside the store (its path "
        "plus .audit-key, mode 0600), created at the first erasure.",
    )

    actor = Text(
        "local user",
        "Who is recorded as acting when no login is configured.",
    )

    roles_file = Text(
        str(PROJECT_ROOT / "roles.yaml"),
        "YAML file mapping signed-in users' emails to roles (used with OIDC login).",
    )


settings = Settings()
"""The settings, read through typed attributes: ``settings.request_timeout_s`` is a float."""

SETTINGS: dict[str, Setting[Value]] = {
    s.name: s for s in vars(Settings).values() if isinstance(s, Setting)
}
"""Every setting by name, in the order the README's table lists them."""


def get_setting(name: str) -> Value:
    """The current value of the setting called ``name`` (for code that holds a name, such as a
    generated form or table); code that names a setting reads it typed: ``settings.<name>``.

    Raises FlywheelError when the environment holds a value of the wrong type.
    """
    return SETTINGS[name].value()


def default_db_path() -> Path:
    """The store path: ``FLYWHEEL_DB`` when set, else ``data/flywheel.duckdb``."""
    return Path(settings.db)


def settings_markdown() -> str:
    """The settings as the Markdown table the README shows."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS.values():
        default = str(setting.default).replace(str(PROJECT_ROOT) + "/", "")
        lines.append(f"| `{setting.env_var}` | `{default}` | {setting.help} |")
    return "\n".join(lines) + "\n"
