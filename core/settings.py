"""Settings as data: each has a name, a default and a help text in one place.

A setting is read from the environment as ``FLYWHEEL_<NAME>`` (upper case) when set, else its
default. The README's settings table and the dashboard's Settings panel are generated from
``SETTINGS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import FlywheelError

__all__ = ["SETTINGS", "Setting", "default_db_path", "get_setting", "settings_markdown"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    """One tunable value: its name, default, type and what it does."""

    name: str
    default: str | int | float | bool
    help: str

    @property
    def env_var(self) -> str:
        """The environment variable that overrides this setting."""
        return "FLYWHEEL_" + self.name.upper()


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("db", str(PROJECT_ROOT / "data" / "flywheel.duckdb"), "Path of the DuckDB store."),
        Setting(
            "auto_demo",
            True,
            "Load the demo workspace when the dashboard starts on an empty store.",
        ),
        Setting(
            "lock_timeout_s",
            15.0,
            "How long to retry when another process holds the store before reporting it.",
        ),
        Setting(
            "backup_key",
            "",
            "Secret key that signs a backup's manifest (HMAC-SHA256); a restore with it set "
            "refuses an unsigned or altered backup. Read at run time, never stored.",
        ),
        Setting(
            "max_text_bytes",
            1_000_000,
            "Largest prompt, response or system text an ingested row may hold.",
        ),
        Setting(
            "ingest_memory_limit",
            "1GB",
            "DuckDB memory limit during an ingest (e.g. 1GB); larger files spill to disk. "
            "Empty = DuckDB's default.",
        ),
        Setting(
            "generation_concurrency",
            64,
            "How many teacher requests synthetic generation keeps in flight at once (an item "
            "waiting to retry holds none). OpenAI-compatible servers (vLLM, llama.cpp, a "
            "hosted API) batch concurrent requests; lower it for a small local server or a "
            "low rate-limit tier, where 429s are retried after their Retry-After.",
        ),
        Setting(
            "max_grid_cells",
            100_000,
            "Largest generation grid (product of the axes' value counts) a plan may have; a "
            "larger one is refused before any cell is listed.",
        ),
        Setting(
            "template_max_output_chars",
            1_000_000,
            "Most characters one render of a user-written template (prompt template, judge "
            "rubric) may produce; larger renders are refused.",
        ),
        Setting(
            "student_system_max_tokens",
            400,
            "Token budget of the student's system message (goal.student_system_message): it "
            "rides in every training example and every served request, so a longer one is a "
            "lint warning (cl100k_base count, an estimate for other tokenizers).",
        ),
        Setting("request_timeout_s", 60.0, "Timeout of one request to a model endpoint."),
        Setting("max_retries", 5, "Retries of one model request on 429, 5xx or a timeout."),
        Setting(
            "generation_invalid_retries",
            2,
            "Extra requests for one item whose reply is malformed or fails its schema.",
        ),
        Setting(
            "retry_backoff_s",
            0.5,
            "First wait before retrying a model request; doubles each retry, with jitter.",
        ),
        Setting("batch_poll_s", 15.0, "Seconds between status checks of an OpenAI batch job."),
        Setting(
            "teacher_base_url",
            "",
            "Base URL of the teacher's OpenAI-compatible server when the plan names none "
            "(else OPENAI_BASE_URL, else OpenAI).",
        ),
        Setting(
            "teacher_api_key",
            "",
            "API key of the teacher's server (else OPENAI_API_KEY); read at run time, "
            "never stored.",
        ),
        Setting(
            "ab_preperiod_days",
            14,
            "Days before an A/B test's start whose interactions form the CUPED pre-period.",
        ),
        Setting(
            "eval_concurrency",
            8,
            "How many model requests an eval run keeps in flight at once.",
        ),
        Setting(
            "eval_api_key",
            "",
            "API key of the evaluated models' and the judge's server (else OPENAI_API_KEY); "
            "read at run time, never stored.",
        ),
        Setting("judge_model", "gpt-4o", "Model that grades outputs with the llm_judge rubric."),
        Setting(
            "judge_base_url",
            "",
            "Base URL of the judge's OpenAI-compatible server (else OPENAI_BASE_URL, else OpenAI).",
        ),
        Setting(
            "sandbox_timeout_s",
            10.0,
            "Seconds a code item's sandbox may run (start, code and tests) before it is killed.",
        ),
        Setting(
            "sandbox_memory_mb",
            512,
            "Address-space limit, MB, of each of a code item's sandboxed processes.",
        ),
        Setting(
            "sandbox_max_processes",
            32,
            "Most processes (and threads) a code item's sandbox may hold at once.",
        ),
        Setting(
            "sandbox_disk_mb",
            64,
            "Size, MB, of a code item's private scratch directory (the sandbox's only writable "
            "place).",
        ),
        Setting(
            "gate_min_items",
            30,
            "Fewest paired items a gate needs before it can pass or fail (else insufficient data).",
        ),
        Setting("gate_alpha", 0.05, "Significance level of the gates' tests (one-sided where so)."),
        Setting("training_poll_s", 10.0, "Seconds between status checks of a fine-tuning job."),
        Setting(
            "training_dir",
            "",
            "Folder of local training jobs (their checkpoints, metrics and weights); empty = "
            "a training/ folder beside the store.",
        ),
        Setting(
            "audit_key",
            "",
            "Secret key of the audit log's erasure entries (HMAC-SHA256 of a forgotten user id); "
            "read at run time, never stored. Empty = a key file beside the store (its path "
            "plus .audit-key, mode 0600), created at the first erasure.",
        ),
        Setting("actor", "local user", "Who is recorded as acting when no login is configured."),
        Setting(
            "roles_file",
            str(PROJECT_ROOT / "roles.yaml"),
            "YAML file mapping signed-in users' emails to roles (used with OIDC login).",
        ),
    ]
}


def get_setting(name: str) -> str | int | float | bool:
    """Return a setting's value from the environment, else its default.

    Raises FlywheelError when the environment holds a value of the wrong type.
    """
    setting = SETTINGS[name]
    raw = os.environ.get(setting.env_var)
    if raw is None or raw == "":
        return setting.default
    default = setting.default
    try:
        if isinstance(default, bool):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise FlywheelError(f"{setting.env_var}={raw!r} is not a valid {kind}.") from None
    return raw


def default_db_path() -> Path:
    """The store path: ``FLYWHEEL_DB`` when set, else ``data/flywheel.duckdb``."""
    return Path(str(get_setting("db")))


def settings_markdown() -> str:
    """The settings as the Markdown table the README shows."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS.values():
        default = str(setting.default).replace(str(PROJECT_ROOT) + "/", "")
        lines.append(f"| `{setting.env_var}` | `{default}` | {setting.help} |")
    return "\n".join(lines) + "\n"
