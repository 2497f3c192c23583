"""Human labels: one table of what every field, column, stage, decision and metric is called
where a person reads it (the dashboard, the CLI's text output, the documents), and one way to
show a value (missing as "—", JSON as key-value text).

``label("mde")`` → "Minimum detectable effect"; ``label("invalid_srm")`` → "Invalid: sample
ratio mismatch"; a key with no entry falls back to its words (``"rows_in"`` → "Rows in"), and
``missing_labels`` names such keys so that a test can require an entry for everything a page
shows. ``label_path("ab_test.mde")`` labels each part of a plan path.

Keys are code names, never user text: a gate's or an axis's name is shown as written.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from core.formatting import MISSING, number

__all__ = [
    "LABELS",
    "MISSING",
    "label",
    "label_path",
    "missing_labels",
    "show",
]


# -- the plan's fields ---------------------------------------------------------------------------

_PLAN_FIELDS: dict[str, str] = {
    # sections
    "goal": "Feature and goal",
    "logging": "What to log",
    "consent": "Consent",
    "quality_filters": "Quality filters",
    "generation": "Synthetic generation",
    "cadence": "Retraining cadence",
    "training": "Training",
    "gates": "Eval gates",
    "ab_test": "A/B test",
    "economics": "Economics",
    "sign_offs": "Risks and sign-offs",
    "schema_version": "Plan format version",
    # 1. feature and goal
    "feature": "Feature",
    "owner": "Owner",
    "start_month": "Start month",
    "horizon_months": "Horizon (months)",
    "teacher_model": "Teacher model",
    "student_model": "Student model",
    "student_system_message": "Student's system message",
    "production_system": "System text of production rows",
    "business_goal": "Business goal",
    "target_quality_retention": "Target quality retention",
    "target_cost_reduction": "Target cost reduction (×)",
    # 2. logging
    "fields": "Logged fields",
    "name": "Name",
    "purpose": "Purpose",
    "pii_class": "PII class",
    "retention_days": "Retention (days)",
    "required": "Required",
    "sampling_rate": "Sampling rate",
    "storage": "Storage",
    # 3. consent
    "scopes": "Consent scopes",
    "retention_limit_days": "Retention limit (days)",
    "flows": "Consent flows",
    "segment": "Segment",
    "mechanism": "Mechanism",
    "default_state": "Default state",
    "prompt": "Prompt",
    "policy_version": "Policy version",
    "withdrawal": "Withdrawal",
    "privacy_review": "Privacy review",
    "reviewer": "Reviewer",
    "status": "Status",
    "decided_on": "Decided on",
    "notes": "Notes",
    # 4. quality filters
    "rule": "Rule",
    "expected_pass_rate": "Expected pass rate",
    "min_chars": "Minimum length (characters)",
    "max_chars": "Maximum length (characters)",
    "threshold": "Threshold",
    "keep": "Keep",
    "ngram": "N-gram length (words)",
    "eval_sets": "Eval sets",
    "languages": "Languages",
    "language": "Language",
    "field": "Field",
    "op": "Operator",
    "value": "Value",
    # 5. generation
    "axes": "Axes",
    "values": "Values",
    "examples_per_cell": "Examples per cell",
    "endpoint": "Endpoint",
    "temperature": "Temperature",
    "prompt_template": "Prompt template",
    "output_schema": "Output schema",
    "expected_input_tokens": "Expected input tokens",
    "expected_output_tokens": "Expected output tokens",
    "budget_usd": "Budget (USD)",
    "grid_size": "Grid cells",
    # 6. cadence
    "mode": "Mode",
    "every_weeks": "Cycle length (weeks)",
    "data_freeze_day": "Data freeze day",
    "training_days": "Training (days)",
    "eval_days": "Evaluation (days)",
    "decision_days": "Decision (days)",
    "min_new_examples": "Minimum new examples",
    "original_to_new_ratio": "Synthetic rows per new production row",
    "max_dataset_size": "Maximum dataset size (rows)",
    "validation_share": "Validation share",
    "retirement": "Retirement policy at the maximum size",
    # training
    "backend": "Backend",
    "local": "Local (LoRA)",
    "together": "Together AI",
    "openai": "OpenAI",
    "base_model": "Base model",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "target_modules": "Target modules",
    "epochs": "Epochs",
    "n_epochs": "Epochs",
    "max_steps": "Maximum steps",
    "learning_rate": "Learning rate",
    "learning_rate_multiplier": "Learning rate multiplier",
    "batch_size": "Batch size",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "max_seq_length": "Maximum sequence length (tokens)",
    "merge_adapter": "Merge adapter into the base model",
    "qlora": "QLoRA (4-bit base model)",
    "save_steps": "Checkpoint every (steps)",
    "chat_template": "Chat template",
    "seed": "Seed",
    "suffix": "Model name suffix",
    "price_per_1m_training_tokens": "Price per 1M training tokens (USD)",
    # 7. gates
    "metric": "Metric",
    "eval_set": "Eval set",
    "comparator": "Comparator",
    "margin": "Margin",
    "ratio": "Ratio to teacher",
    "slices": "Slices",
    "blocking": "Blocking",
    # 8. A/B design
    "arms": "Arms",
    "model": "Model",
    "traffic_share": "Traffic share",
    "primary_metric": "Primary metric",
    "baseline_rate": "Baseline rate",
    "mde": "Minimum detectable effect",
    "mde_relative": "Effect is relative to the baseline",
    "alpha": "Significance level (α)",
    "power": "Power",
    "daily_traffic": "Daily traffic (users)",
    "sequential": "Sequential monitoring",
    "guardrails": "Guardrails",
    "max_relative_increase": "Largest allowed increase",
    "ramp_steps": "Ramp steps",
    # 9. economics
    "teacher_input_per_1m": "Teacher input price per 1M tokens (USD)",
    "teacher_output_per_1m": "Teacher output price per 1M tokens (USD)",
    "student_input_per_1m": "Student input price per 1M tokens (USD)",
    "student_output_per_1m": "Student output price per 1M tokens (USD)",
    "student_training_per_1m": "Student training price per 1M tokens (USD)",
    "gpu_hour_usd": "GPU-hour price (USD)",
    "monthly_requests": "Requests per month",
    "avg_input_tokens": "Average input tokens",
    "avg_output_tokens": "Average output tokens",
    "teacher_monthly_cost": "Teacher cost per month (USD)",
    "student_monthly_cost": "Student cost per month (USD)",
    "monthly_savings": "Savings per month (USD)",
    "cost_reduction": "Cost reduction (×)",
    # 11. risks and sign-offs
    "risks": "Risks",
    "risk": "Risk",
    "mitigation": "Mitigation",
    "approvers": "Approvers",
    "role": "Role",
}

# -- code values: stages, decisions, verdicts, states, kinds -------------------------------------

_CODES: dict[str, str] = {
    # cycle pipeline stages (core.cycles) and the filter rules that name them
    "window": "Production window",
    "length_bounds": "Length bounds",
    "code_parses": "Code parses",
    "pii_redacted": "PII redacted",
    "positive_feedback": "Rated thumbs-up",
    "accepted": "Accepted",
    "positive_or_accepted": "Rated up or accepted",
    "exact_dedup": "Exact duplicates removed",
    "near_dedup": "Near-duplicates removed",
    "decontamination": "Eval-set overlap removed",
    "field_condition": "Field condition",
    "mix": "Mixed with synthetic and carried rows",
    "split": "Train / validation split",
    "carried": "Carried from the parent version",
    "synthetic": "Synthetic",
    "production": "Production",
    # A/B decisions (core.stats / core.abtest)
    "ship": "Ship the treatment",
    "keep_running": "Keep running",
    "stop_no_effect": "Stop: no worthwhile effect",
    "roll_back": "Roll back the treatment",
    "invalid_srm": "Invalid: sample ratio mismatch",
    # gate verdicts and decisions (core.gates)
    "pass": "Pass",
    "fail": "Fail",
    "insufficient_data": "Insufficient data",
    "approved": "Approved",
    "overridden": "Overridden",
    "rejected": "Rejected",
    "ab_ship": "Shipped after the A/B test",
    # sign-offs (core.signoffs) and the privacy review's states
    "approve": "Approve",
    "reject": "Reject",
    "not_started": "Not started",
    "in_review": "In review",
    "pending": "Pending",
    # gate comparators
    "absolute": "Absolute threshold",
    "no_regression": "No regression vs production",
    "non_inferiority": "Non-inferior to the teacher",
    "cost": "Cost",
    "latency": "Latency",
    # PII classes, consent scopes, mechanisms and roles
    "none": "No personal data",
    "pseudonymous": "Pseudonymous",
    "direct_identifier": "Direct identifier",
    "free_text": "Free text",
    "human_review": "Human review",
    "analytics": "Analytics",
    "opt_in": "Opt-in",
    "opt_out": "Opt-out",
    "contract": "Contract",
    "granted": "Granted",
    "not_granted": "Not granted",
    "grant": "Grant",
    "withdrawn": "Withdrawn",
    "withdraw": "Withdraw",
    "pm": "PM",
    "privacy_reviewer": "Privacy reviewer",
    "ml_lead": "ML lead",
    "eng_lead": "Engineering lead",
    "legal": "Legal",
    # eval roles, output schemas, near-dup keep rules, production system text
    "candidate": "Candidate",
    "teacher": "Teacher",
    "other": "Other",
    "coding_qa": "Coding Q&A",
    "support_qa": "Support Q&A",
    "qa": "Q&A",
    "oldest_first": "Oldest first",
    "lowest_rated_first": "Lowest rated first",
    "cell_balance": "Balance the grid's cells",
    "earliest": "Earliest",
    "best_rated": "Best rated",
    "plan": "The plan's system message",
    "logged": "As each interaction logged it",
    "python": "Python",
    "monthly": "Monthly",
    "weeks": "Every N weeks",
    "tokenizer": "The tokenizer's",
    "chatml": "ChatML",
    "train": "Train",
    "validation": "Validation",
    # training job states
    "queued": "Queued",
    "running": "Running",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "interrupted": "Interrupted",
    "completed": "Completed",
    "done": "Done",
    "online": "Online",
    "batch": "Batch API",
    # eval-set imports (core.evals), the sample-ratio check (core.stats), lint severities
    "created": "Created",
    "updated": "Updated",
    "unchanged": "Unchanged",
    "ok": "OK",
    "mismatch": "Mismatch",
    "not_judged": "Not judged",
    "error": "Error",
    "warning": "Warning",
}

# -- metrics -------------------------------------------------------------------------------------

_METRICS: dict[str, str] = {
    "acceptance_rate": "Acceptance rate",
    "thumbs_up_rate": "Thumbs-up rate",
    "thumbs_down_rate": "Thumbs-down (complaint) rate",
    "latency_ms": "Latency (ms)",
    "latency_p95_ms": "Latency p95 (ms)",
    "cost_per_1k": "Cost per 1,000 requests (USD)",
    "pass_rate": "Pass rate",
    "tests_pass_rate": "Tests pass rate",
    "parse_rate": "Parse rate",
    "judge_score": "Judge score",
    "exact_match": "Exact match",
    "normalised_match": "Normalised match",
    "regex_match": "Regex match",
    "json_valid": "Valid JSON",
    "cost_usd": "Cost (USD)",
    "input_tokens": "Input tokens",
    "output_tokens": "Output tokens",
    "score": "Score",
}

# -- columns of the tables the pages and documents show ------------------------------------------

_COLUMNS: dict[str, str] = {
    # ingest batches and quarantine
    "batch_id": "Batch",
    "kind": "Kind",
    "file_name": "File",
    "sha256": "SHA-256",
    "cycle": "Cycle",
    "rows_read": "Rows read",
    "duplicates": "Duplicates",
    "started_at": "Started",
    "finished_at": "Finished",
    "actor": "By",
    "pii_detectors": "PII detectors",
    "read_path": "Read by",
    "response": "Response",
    "system": "System message",
    "feedback": "Feedback",
    "topic": "Topic",
    "difficulty": "Difficulty",
    "metadata": "Metadata",
    "pii": "PII found",
    "line": "Line",
    "reason": "Reason",
    "raw": "Raw line",
    "user_id": "User",
    # consent
    "scope": "Scope",
    "action": "Action",
    "source": "Source",
    "events": "Events",
    "users": "Users",
    "ts": "Time",
    "state": "State",
    "interactions": "Interactions",
    "path": "Path",
    "version_id": "Dataset version",
    "job_id": "Job",
    "fine_tuned_model": "Fine-tuned model",
    # cycle stages, removed rows and dataset versions
    "position": "Step",
    "stage": "Stage",
    "origin": "From",
    "params": "Parameters",
    "rows_in": "Rows in",
    "rows_out": "Rows out",
    "removed": "Removed",
    "added": "Added",
    "seconds": "Seconds",
    "interaction_id": "Interaction",
    "detail": "Detail",
    "rows": "Rows",
    "number": "Number",
    "parent_version": "Parent version",
    "run_id": "Run",
    "plan_version": "Plan version",
    "train_rows": "Training rows",
    "validation_rows": "Validation rows",
    "production_rows": "Production rows",
    "synthetic_rows": "Synthetic rows",
    "created_by": "Created by",
    "created_at": "Created",
    "cell": "Cell",
    "cell_key": "Grid cell",
    "kept": "Kept",
    "retired": "Retired (size cap)",
    "removed_on_recheck": "Removed on recheck",
    "erased_rows": "Erased since",
    "lineage": "Lineage",
    "composition": "Composition",
    # generation
    "requested": "Requested",
    "generated": "Generated",
    "api_calls": "API calls",
    "estimated_cost_usd": "Estimated cost (USD)",
    "message": "Message",
    "failure_reason": "Failure reason",
    "attempts": "Attempts",
    "item_index": "Item",
    "question": "Question",
    "answer": "Answer",
    "target": "Target",
    "unique": "Unique",
    "shortfall": "Short by",
    "share": "Share",
    "valid": "Valid",
    "exact_unique_rate": "Unique (exact)",
    "unique_rate": "Unique (near-duplicates)",
    "answer_length": "Answer length (characters)",
    "production_share": "Share of production",
    "training_share": "Share of training data",
    "suggested": "Suggested next round",
    "spec_hash": "Spec",
    "input_file_id": "Input file",
    # plans, versions and sign-offs
    "plan_id": "Plan",
    "version": "Version",
    "author": "Author",
    "note": "Note",
    "ready": "Ready",
    "lint_errors": "Lint errors",
    "lint_warnings": "Lint warnings",
    "approver": "Approver",
    "decision": "Decision",
    "decided_at": "Decided",
    "saved": "Saved",
    "by": "By",
    "errors": "Errors",
    "warnings": "Warnings",
    "before": "Before",
    "after": "After",
    "start": "Start",
    "end": "End",
    "freeze": "Data freeze",
    "trained": "Trained",
    "evaluated": "Evaluated",
    "decided": "Decided",
    "data_freeze": "Data freeze",
    "training_done": "Trained by",
    "eval_done": "Evaluated by",
    "ab_start": "A/B test starts",
    "ab_end": "A/B test ends",
    "uses_production_data": "Uses production data",
    # evals, gates and the A/B test
    "run": "Run",
    "item_id": "Item",
    "grader": "Grader",
    "verdict": "Verdict",
    "candidate_model": "Candidate model",
    "items": "Items",
    "mean": "Mean",
    "ci_low": "Interval low",
    "ci_high": "Interval high",
    "wins": "Wins",
    "losses": "Losses",
    "ties": "Ties",
    "n": "N",
    "arm": "Arm",
    "variant": "Arm",
    "lift": "Lift",
    "p_value": "p-value",
    "significant": "Significant",
    "frozen": "Frozen",
    "content_hash": "Content hash",
    "frozen_at": "Frozen",
    "frozen_by": "Frozen by",
    "frozen_reason": "Why frozen",
    "acceptance": "Acceptance",
    "control": "Control",
    "treatment": "Treatment",
    "guardrail": "Guardrail",
    "tolerance": "Tolerance",
    "p": "p-value",
    "gate": "Gate",
    "dimension": "Dimension",
    "slice": "Slice",
    "reference": "Reference",
    "p_holm": "p-value (Holm)",
    "short": "Falls short",
    "small_sample": "Small sample",
    "grader_errors": "Grader errors",
    "deviations": "Deviations",
    "where": "Where",
    "gap": "Gap",
    "why": "Why",
    # the command line's listings (core.cli)
    "latest_version": "Latest version",
    "demo": "Demo",
    "versions": "Versions",
    "dataset_version": "Dataset version",
    "explanation": "Why",
    "trained_tokens": "Trained tokens",
    "weights_sha256": "Weights SHA-256",
    "severity": "Severity",
    "code": "Check",
    # audit
    "audit_id": "Entry",
    "target_id": "Target",
}

LABELS: dict[str, str] = {**_PLAN_FIELDS, **_CODES, **_METRICS, **_COLUMNS}
"""Every key a person may see, with its label."""

_ACRONYMS = {
    "ab": "A/B",
    "ai": "AI",
    "api": "API",
    "ci": "CI",
    "id": "ID",
    "json": "JSON",
    "llm": "LLM",
    "lora": "LoRA",
    "mde": "MDE",
    "ml": "ML",
    "pii": "PII",
    "pm": "PM",
    "sha256": "SHA-256",
    "srm": "SRM",
    "url": "URL",
    "usd": "(USD)",
}


def _words(key: str) -> str:
    """A code name as words, acronyms kept: ``pii_class`` → "PII class"."""
    parts = [p for p in re.split(r"[_\s]+", key.strip()) if p]
    words = [_ACRONYMS.get(p.lower(), p) for p in parts]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def label(key: object) -> str:
    """The label of a field, column, stage, decision or metric; its words when it has none."""
    text = str(key)
    found = LABELS.get(text)
    if found is not None:
        return found
    return _words(text) if text else MISSING


def label_path(path: str) -> str:
    """A plan path as labels: ``gates[0].threshold`` → "Eval gates › 1 › Threshold"."""
    parts: list[str] = []
    for segment in path.split("."):
        name, *indices = re.split(r"\[(\d+)\]", segment)
        if name:
            parts.append(label(name))
        parts.extend(str(int(i) + 1) for i in indices if i)
    return " › ".join(parts)


def missing_labels(keys: Iterable[object]) -> list[str]:
    """The keys of ``keys`` that have no entry in the table (a test's check)."""
    return sorted({str(k) for k in keys if str(k) not in LABELS})


def _parsed_json(text: str) -> Any:
    stripped = text.strip()
    if len(stripped) < 2 or (stripped[0], stripped[-1]) not in {("{", "}"), ("[", "]")}:
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def show(value: Any) -> str:
    """A value as a person reads it: missing as "—", JSON and mappings as "Key: value; …" text,
    lists comma-separated, booleans as yes/no, times in UTC, numbers without float noise."""
    if value is None or _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return number(int(value))
    if isinstance(value, numbers.Real):
        return number(float(value))
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M") + (" UTC" if value.tzinfo else "")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        if not value:
            return MISSING
        return "; ".join(f"{label(k)}: {_nested(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(show(v) for v in value) if value else MISSING
    if isinstance(value, str):
        parsed = _parsed_json(value)
        if parsed is not None and isinstance(parsed, dict | list):
            return show(parsed)
        return value if value.strip() else MISSING
    return str(value)


def _nested(value: Any) -> str:
    text = show(value)
    return f"({text})" if isinstance(value, Mapping) and value else text


def _is_missing(value: Any) -> bool:
    """NaN and pandas' missing markers (NA, NaT) without importing pandas."""
    if type(value).__name__ in {"NAType", "NaTType"}:
        return True
    return isinstance(value, numbers.Real) and value != value  # NaN is unequal to itself
