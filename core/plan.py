"""The six-month flywheel plan: Pydantic models of its sections, and what derives from them.

The plan is the pipeline: the filters, consent scopes, gates, mixing ratios and A/B design
written here are the configuration that cycles, generation and gates run. Every field has a
description, which the dashboard shows as the field's help text. Models reject unknown fields.
Structural rules live on the models; contradictions between sections are the linter's job
(``core.lint``), so that a draft with contradictions can still be saved and shown as not ready.
"""

from __future__ import annotations

import calendar
import hashlib
import itertools
import json
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from core.errors import PlanError
from core.settings import settings

__all__ = [
    "TRAINING_BACKEND_LABELS",
    "TRAINING_BACKEND_LAST_DAY",
    "ABDesign",
    "Approver",
    "Arm",
    "Axis",
    "Cadence",
    "ConsentFlow",
    "ConsentPolicy",
    "CycleMilestones",
    "Economics",
    "FeatureGoal",
    "Gate",
    "Generation",
    "Guardrail",
    "LocalTraining",
    "LoggedField",
    "Logging",
    "OpenAITraining",
    "Plan",
    "PrivacyReview",
    "QualityFilter",
    "Risk",
    "SignOffs",
    "TogetherTraining",
    "Training",
    "TrainingBackend",
    "check_grid_size",
    "grid_cells",
    "max_grid_cells",
    "plan_timeline",
    "system_message_hash",
]

PiiClass = Literal["none", "pseudonymous", "direct_identifier", "free_text"]
ConsentScope = Literal["training", "human_review", "analytics"]
Role = Literal["pm", "privacy_reviewer", "ml_lead", "eng_lead", "legal"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# -- 1. Feature and goal -----------------------------------------------------------------------


class FeatureGoal(_Section):
    """What the flywheel is for and what success means."""

    feature: str = Field(
        min_length=1, description="The AI feature this flywheel improves, as users know it."
    )
    owner: str = Field("", description="The PM accountable for the plan.")
    start_month: str = Field(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
        description="First month of the plan, as YYYY-MM; cycles are scheduled from its first day.",
    )
    horizon_months: int = Field(6, ge=1, le=24, description="How many months the plan covers.")
    teacher_model: str = Field(
        min_length=1, description="The large model that writes training data (e.g. gpt-4o)."
    )
    student_model: str = Field(
        min_length=1, description="The small model that is fine-tuned (e.g. gpt-4o-mini)."
    )
    student_system_message: str = Field(
        "",
        description="The system message the student is trained, evaluated and served with: "
        "every exported example and every eval run of a candidate carries it, so the "
        "student learns under the prompt it will be served with. Empty = no system message.",
    )
    production_system: Literal["plan", "logged"] = Field(
        "plan",
        description="The system text of production rows in a dataset: plan = the student's "
        "system message above, so every example trains under one prompt; logged = the text "
        "each interaction logged (none where it logged none).",
    )
    business_goal: str = Field("", description="The business outcome the feature should move.")
    target_quality_retention: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Share of the teacher's quality the student must keep (0.95 = 95%).",
    )
    target_cost_reduction: float = Field(
        10.0, ge=1, description="How many times cheaper the student should be than the teacher."
    )

    @property
    def system_message(self) -> str | None:
        """The student's system message, or None when the plan sets none."""
        return self.student_system_message.strip() or None

    @property
    def start_date(self) -> date:
        """The first day of the start month."""
        year, month = (int(part) for part in self.start_month.split("-"))
        return date(year, month, 1)


# -- 2. What to log ----------------------------------------------------------------------------


class LoggedField(_Section):
    """One field of each logged interaction."""

    name: str = Field(min_length=1, description="Field name in the interaction log.")
    purpose: str = Field("", description="Why this field is logged.")
    pii_class: PiiClass = Field(
        "none",
        description="none; pseudonymous (an id); direct_identifier (email, name); "
        "free_text (may hold PII).",
    )
    retention_days: int = Field(ge=1, description="How long raw values are kept, in days.")
    required: bool = Field(True, description="Whether every interaction must carry it.")


class Logging(_Section):
    """What each interaction logs, how much traffic is logged and where it is stored."""

    fields: list[LoggedField] = Field(
        default_factory=list, description="The logged fields with their PII class and retention."
    )
    sampling_rate: float = Field(
        1.0, gt=0, le=1, description="Share of interactions that are logged (1.0 = all)."
    )
    storage: str = Field("", description="Where the logs are stored (table, bucket, region).")


# -- 3. Consent --------------------------------------------------------------------------------


class ConsentFlow(_Section):
    """How consent is collected in one jurisdiction or user segment."""

    segment: str = Field(min_length=1, description="Jurisdiction or segment, e.g. EU, US, B2B.")
    mechanism: Literal["opt_in", "opt_out", "contract"] = Field(
        description="opt_in: no consent until granted; opt_out: granted until withdrawn; "
        "contract: covered by the customer agreement."
    )
    default_state: Literal["granted", "not_granted"] = Field(
        description="The consent state before the user answers."
    )
    prompt: str = Field("", description="Where and how the user is asked.")
    policy_version: str = Field("", description="Version of the policy text the user sees.")
    withdrawal: str = Field("", description="How a withdrawal is handled and how fast.")


class PrivacyReview(_Section):
    """The privacy review that must approve production data use."""

    reviewer: str = Field("", description="Who reviews privacy.")
    status: Literal["not_started", "in_review", "approved", "rejected"] = Field(
        "not_started", description="Where the review stands."
    )
    decided_on: date | None = Field(None, description="When the review was approved or rejected.")
    notes: str = Field("", description="Conditions and remarks of the reviewer.")


class ConsentPolicy(_Section):
    """Consent scopes, flows per jurisdiction and the privacy review."""

    scopes: list[ConsentScope] = Field(
        default_factory=list,
        description="Scopes users are asked for: training, human_review, analytics.",
    )
    retention_limit_days: int = Field(
        365, ge=1, description="Longest the consent policy allows personal data to be kept."
    )
    flows: list[ConsentFlow] = Field(
        default_factory=list, description="The consent flow of each jurisdiction or segment."
    )
    privacy_review: PrivacyReview = Field(
        default_factory=PrivacyReview, description="The privacy review of this plan."
    )


# -- 4. Quality filters ------------------------------------------------------------------------


class _Filter(_Section):
    expected_pass_rate: float = Field(
        1.0, ge=0, le=1, description="Share of rows this rule is expected to keep."
    )


class PositiveFeedback(_Filter):
    """Keep interactions the user rated thumbs-up."""

    rule: Literal["positive_feedback"] = "positive_feedback"


class Accepted(_Filter):
    """Keep interactions whose answer the user accepted (copied or applied)."""

    rule: Literal["accepted"] = "accepted"


class PositiveOrAccepted(_Filter):
    """Keep interactions that were rated up or accepted."""

    rule: Literal["positive_or_accepted"] = "positive_or_accepted"


class LengthBounds(_Filter):
    """Keep responses whose length in characters lies within bounds."""

    rule: Literal["length_bounds"] = "length_bounds"
    min_chars: int = Field(1, ge=0, description="Shortest response kept, in characters.")
    max_chars: int = Field(20_000, ge=1, description="Longest response kept, in characters.")


class PiiRedacted(_Filter):
    """Redact PII in prompt, response and system text to typed placeholders."""

    rule: Literal["pii_redacted"] = "pii_redacted"


class ExactDedup(_Filter):
    """Drop exact duplicates of normalised prompt and response text."""

    rule: Literal["exact_dedup"] = "exact_dedup"


class NearDedup(_Filter):
    """Drop near-duplicates found by MinHash with LSH banding."""

    rule: Literal["near_dedup"] = "near_dedup"
    threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity at which two texts are near-duplicates."
    )
    keep: Literal["earliest", "best_rated"] = Field(
        "earliest", description="Which member of a near-duplicate group is kept."
    )


class Decontamination(_Filter):
    """Drop rows that overlap an eval set (n-gram overlap)."""

    rule: Literal["decontamination"] = "decontamination"
    ngram: int = Field(13, ge=3, le=50, description="n of the word n-grams compared.")
    threshold: float = Field(
        0.5, gt=0, le=1, description="Share of a row's n-grams found in an eval item to drop it."
    )
    eval_sets: list[str] = Field(
        default_factory=list, description="Eval sets to check against; empty = every stored set."
    )


class Language(_Filter):
    """Keep rows in the given languages."""

    rule: Literal["language"] = "language"
    languages: list[str] = Field(
        default_factory=lambda: ["en"], description="ISO 639-1 codes of the languages kept."
    )


class CodeParses(_Filter):
    """Keep responses whose fenced code blocks parse (coding assistants)."""

    rule: Literal["code_parses"] = "code_parses"
    language: Literal["python"] = Field("python", description="Language of the code blocks.")


class FieldCondition(_Filter):
    """Keep rows whose logged field satisfies a condition."""

    rule: Literal["field_condition"] = "field_condition"
    field: str = Field(min_length=1, description="The logged field tested.")
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"] = Field(
        description="Comparison operator."
    )
    value: str = Field(description="Value compared against (comma-separated for in/not_in).")


QualityFilter = Annotated[
    PositiveFeedback
    | Accepted
    | PositiveOrAccepted
    | LengthBounds
    | PiiRedacted
    | ExactDedup
    | NearDedup
    | Decontamination
    | Language
    | CodeParses
    | FieldCondition,
    Field(discriminator="rule"),
]
"""One quality-filter rule; the ``rule`` key selects its kind."""

FILTER_KINDS: dict[str, type[_Filter]] = {
    kind.model_fields["rule"].default: kind
    for kind in (
        PositiveFeedback,
        Accepted,
        PositiveOrAccepted,
        LengthBounds,
        PiiRedacted,
        ExactDedup,
        NearDedup,
        Decontamination,
        Language,
        CodeParses,
        FieldCondition,
    )
}


# -- 5. Synthetic generation -------------------------------------------------------------------


class Axis(_Section):
    """One axis of the generation grid."""

    name: str = Field(min_length=1, description="Axis name, e.g. topic or difficulty.")
    values: list[str] = Field(default_factory=list, description="The axis values.")


class Generation(_Section):
    """How the teacher generates the synthetic dataset across the axis grid."""

    axes: list[Axis] = Field(default_factory=list, description="The axes of the grid.")
    examples_per_cell: int = Field(10, ge=1, description="Examples generated for each cell.")
    teacher_model: str = Field("", description="Model that generates; empty = the plan's teacher.")
    endpoint: str = Field(
        "",
        description="Base URL of an OpenAI-compatible server; empty = OpenAI or OPENAI_BASE_URL.",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    prompt_template: str = Field(
        "", description="Jinja template of the request; it sees each axis value by its name."
    )
    output_schema: Literal["coding_qa", "support_qa", "qa"] = Field(
        "qa", description="Schema every reply must match."
    )
    expected_input_tokens: int = Field(
        300, ge=1, description="Estimated prompt tokens per generated example."
    )
    expected_output_tokens: int = Field(
        600, ge=1, description="Estimated completion tokens per generated example."
    )
    budget_usd: float = Field(50.0, ge=0, description="Spending cap of one generation run.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def grid_size(self) -> int:
        """Number of cells: the product of the axes' value counts."""
        size = 1
        for axis in self.axes:
            size *= len(axis.values)
        return size if self.axes else 0


# -- 6. Cadence --------------------------------------------------------------------------------


class Cadence(_Section):
    """When and on what the student is retrained."""

    mode: Literal["monthly", "weeks"] = Field(
        "monthly", description="monthly: a cycle per calendar month; weeks: every N weeks."
    )
    every_weeks: int = Field(4, ge=1, le=26, description="Cycle length in weeks (mode weeks).")
    data_freeze_day: int = Field(
        7, ge=1, description="Day of each cycle on which its training data is frozen."
    )
    training_days: int = Field(3, ge=0, description="Days from data freeze to a trained model.")
    eval_days: int = Field(2, ge=0, description="Days to evaluate the candidate against gates.")
    decision_days: int = Field(1, ge=0, description="Days at the cycle's end to decide and ship.")
    min_new_examples: int = Field(
        500,
        ge=0,
        description=(
            "Fewest new production rows (after the filters) that justify retraining: a cycle "
            "with fewer says so and builds no dataset version unless forced. 0: the plan "
            "never trains on production data."
        ),
    )
    original_to_new_ratio: float = Field(
        1.0,
        ge=0,
        description=(
            "The share of original (synthetic) data: at least this many synthetic rows per "
            "production row. Each cycle carries its parent's rows forward; synthetic rows are "
            "added while the dataset holds fewer than this ratio."
        ),
    )
    max_dataset_size: int = Field(
        20_000,
        ge=1,
        description=(
            "Largest fine-tuning dataset, in rows. Past it the dataset keeps "
            "max / (1 + ratio) production rows and retires the rest by the retirement policy."
        ),
    )
    retirement: Literal["oldest_first", "lowest_rated_first", "cell_balance"] = Field(
        "oldest_first",
        description=(
            "Which rows leave when the dataset reaches its maximum size: oldest_first (by the "
            "cycle that added them, then time), lowest_rated_first (thumbs-down and unrated "
            "before accepted and thumbs-up), or cell_balance (from the fullest cells of the "
            "grid first). Each retired row is recorded with its reason."
        ),
    )
    validation_share: float = Field(
        0.1, gt=0, lt=0.5, description="Share of each dataset held out for validation."
    )


TrainingBackend = Literal["local", "together", "openai"]

# The last day each hosted trainer takes new fine-tuning jobs, as data: a date added here is
# what the TRAINING_BACKEND_CLOSED lint rule and a job's start both read.
TRAINING_BACKEND_LAST_DAY: dict[str, date] = {"openai": date(2027, 1, 6)}

TRAINING_BACKEND_LABELS: dict[str, str] = {
    "local": "locally with LoRA (TRL + PEFT)",
    "together": "on Together AI",
    "openai": "on OpenAI",
}


class LocalTraining(_Section):
    """Supervised fine-tuning with TRL's SFTTrainer and a PEFT LoRA adapter, on this machine's
    GPU where there is one, else its CPU."""

    base_model: str = Field(
        "",
        description="Open-weights base model: a local directory, or a Hugging Face model id "
        "already in the local cache (nothing is downloaded).",
    )
    lora_rank: int = Field(16, description="LoRA rank r, the size of the low-rank update (4–64).")
    lora_alpha: int = Field(32, description="LoRA alpha; the update is scaled by alpha / rank.")
    lora_dropout: float = Field(0.05, description="Dropout on the LoRA layers (0–0.5).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Modules that get adapters, e.g. q_proj, v_proj; all-linear = every linear "
        "layer but the output head.",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps; empty = run the epochs."
    )
    learning_rate: float = Field(2e-4, description="Peak learning rate of the adapter.")
    batch_size: int = Field(4, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Steps whose gradients add up before one optimizer step."
    )
    max_seq_length: int = Field(
        2048, description="Longest example in tokens; longer ones are truncated."
    )
    merge_adapter: bool = Field(
        False,
        description="Also write the base model with the adapter merged in (for servers without "
        "LoRA support); the candidate is then the merged weights.",
    )
    qlora: bool = Field(
        True,
        description="Load the base model in 4 bits (QLoRA) where bitsandbytes and a GPU are "
        "present; full precision elsewhere.",
    )
    save_steps: int = Field(
        50, ge=1, description="Optimizer steps between checkpoints a stopped job resumes from."
    )
    chat_template: Literal["tokenizer", "chatml"] = Field(
        "tokenizer",
        description="How examples are formatted: the tokenizer's own chat template (a tokenizer "
        "without one is refused), or ChatML for a tokenizer that has none.",
    )
    seed: int = Field(42, description="Random seed of the adapter's initialisation and order.")


class TogetherTraining(_Section):
    """LoRA fine-tuning on Together AI through its together package (key: TOGETHER_API_KEY)."""

    base_model: str = Field(
        "", description="Together model to fine-tune; empty = the plan's student model."
    )
    n_epochs: int = Field(3, ge=1, le=20, description="Epochs.")
    learning_rate: float = Field(1e-5, gt=0, description="Learning rate.")
    batch_size: int | None = Field(None, ge=1, description="Batch size; empty = Together's max.")
    lora_rank: int = Field(16, description="LoRA rank r.")
    lora_alpha: int = Field(32, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, description="Dropout on the LoRA layers (0–0.5).")
    suffix: str = Field("", max_length=40, description="Suffix of the output model's name.")
    price_per_1m_training_tokens: float = Field(
        0.48, ge=0, description="Training price, $ per 1M trained tokens (cost of each job)."
    )


class OpenAITraining(_Section):
    """Fine-tuning through OpenAI's /v1/fine_tuning/jobs (or a server offering the same API)."""

    base_model: str = Field("", description="Model fine-tuned; empty = the plan's student model.")
    endpoint: str = Field(
        "",
        description="Base URL of the fine-tuning server; empty = OpenAI or OPENAI_BASE_URL.",
    )
    n_epochs: int | None = Field(None, ge=1, le=50, description="Epochs; empty = auto.")
    batch_size: int | None = Field(None, ge=1, description="Batch size; empty = auto.")
    learning_rate_multiplier: float | None = Field(
        None, gt=0, description="Learning-rate multiplier; empty = auto."
    )
    suffix: str = Field(
        "", max_length=64, description="Suffix of the fine-tuned model's name (e.g. the feature)."
    )
    price_per_1m_training_tokens: float = Field(
        3.0, ge=0, description="Training price, $ per 1M trained tokens (cost of each job)."
    )

    def hyperparameters(self) -> dict[str, int | float]:
        """The hyperparameters set explicitly (others are left to the server's auto)."""
        values = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        return {k: v for k, v in values.items() if v is not None}


_OPENAI_FLAT_KEYS = frozenset(OpenAITraining.model_fields)


class Training(_Section):
    """How the student is fine-tuned in each cycle: locally with LoRA, on Together AI, or on
    OpenAI until it stops taking new jobs; each backend keeps its own settings."""

    backend: TrainingBackend = Field(
        "local",
        description="Where the student trains: local (LoRA with TRL and PEFT on this machine), "
        "together (Together AI) or openai (no new jobs after 2027-01-06).",
    )
    local: LocalTraining = Field(
        default_factory=LocalTraining, description="Settings of local LoRA training."
    )
    together: TogetherTraining = Field(
        default_factory=TogetherTraining, description="Settings of Together AI fine-tuning."
    )
    openai: OpenAITraining = Field(
        default_factory=OpenAITraining, description="Settings of OpenAI fine-tuning."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_openai_only_layout(cls, data: Any) -> Any:
        """Plans saved before the backends existed kept OpenAI's settings at this level."""
        if isinstance(data, dict) and _OPENAI_FLAT_KEYS & data.keys():
            flat = {k: v for k, v in data.items() if k in _OPENAI_FLAT_KEYS}
            rest = {k: v for k, v in data.items() if k not in _OPENAI_FLAT_KEYS}
            return {"backend": "openai", **rest, "openai": {**flat, **rest.get("openai", {})}}
        return data

    def base_model(self, student_model: str) -> str:
        """The model the chosen backend fine-tunes (hosted backends default to the student)."""
        if self.backend == "local":
            return self.local.base_model
        chosen = self.together if self.backend == "together" else self.openai
        return chosen.base_model or student_model


# -- 7. Eval gates -----------------------------------------------------------------------------


class Gate(_Section):
    """A release gate: a metric on an eval set with a comparator."""

    name: str = Field(min_length=1, description="Short name of the gate.")
    metric: str = Field(min_length=1, description="Metric measured, e.g. pass_rate, judge_score.")
    eval_set: str = Field("", description="Frozen eval set the metric is measured on.")
    comparator: Literal["absolute", "no_regression", "non_inferiority", "cost", "latency"] = Field(
        description="absolute: ≥ threshold; no_regression: not worse than production by more "
        "than margin; non_inferiority: ≥ ratio × teacher; cost / latency: student within "
        "threshold × the reference."
    )
    threshold: float | None = Field(None, description="Absolute threshold or cost/latency factor.")
    margin: float | None = Field(None, ge=0, description="Allowed drop against production.")
    ratio: float | None = Field(None, description="Share of the teacher's score to keep.")
    slices: list[str] = Field(
        default_factory=list, description="Slice labels checked one by one (e.g. topic)."
    )
    blocking: bool = Field(True, description="A blocking gate stops the release; else it warns.")


# -- 8. A/B design -----------------------------------------------------------------------------


class Arm(_Section):
    """One arm of the A/B test."""

    name: str = Field(min_length=1, description="Arm name, e.g. control or treatment.")
    model: str = Field("", description="Model served in this arm.")
    traffic_share: float = Field(gt=0, le=1, description="Share of users randomised to the arm.")


class Guardrail(_Section):
    """A metric that must not get worse beyond a tolerance."""

    metric: str = Field(min_length=1, description="Guardrail metric, e.g. latency_p95_ms.")
    max_relative_increase: float = Field(
        0.1, ge=0, description="Largest tolerated relative increase (0.1 = +10%)."
    )


class ABDesign(_Section):
    """How the fine-tuned student is tested against production."""

    arms: list[Arm] = Field(default_factory=list, description="Arms and their traffic split.")
    primary_metric: str = Field("acceptance_rate", description="The metric the decision rests on.")
    baseline_rate: float = Field(
        0.3, gt=0, lt=1, description="Current value of the primary metric (a proportion)."
    )
    mde: float = Field(0.05, gt=0, description="Minimum detectable effect.")
    mde_relative: bool = Field(True, description="Whether the MDE is relative to the baseline.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level (two-sided).")
    power: float = Field(0.8, gt=0.5, lt=1, description="Probability of detecting the MDE.")
    daily_traffic: int = Field(
        1000, ge=1, description="Users entering the test per day, all arms together."
    )
    sequential: bool = Field(
        True, description="Monitor with confidence sequences, so peeking is safe."
    )
    guardrails: list[Guardrail] = Field(
        default_factory=list, description="Metrics that must not degrade."
    )
    ramp_steps: list[float] = Field(
        default_factory=lambda: [0.05, 0.25, 0.5],
        description="Treatment traffic shares the rollout ramps through.",
    )


# -- 9. Economics ------------------------------------------------------------------------------


class Economics(_Section):
    """Token prices and volume, from which the monthly cost and savings follow."""

    teacher_input_per_1m: float = Field(2.5, ge=0, description="Teacher price, $ per 1M input.")
    teacher_output_per_1m: float = Field(10.0, ge=0, description="Teacher price, $ per 1M output.")
    student_input_per_1m: float = Field(0.15, ge=0, description="Student price, $ per 1M input.")
    student_output_per_1m: float = Field(0.6, ge=0, description="Student price, $ per 1M output.")
    student_training_per_1m: float = Field(
        3.0, ge=0, description="Fine-tuning price of the student, $ per 1M training tokens."
    )
    gpu_hour_usd: float = Field(
        2.5,
        ge=0,
        description="Price of one GPU-hour for local training (an hour of the machine's time "
        "when it trains on CPU); a local job costs its hours × this price.",
    )
    monthly_requests: int = Field(100_000, ge=0, description="Expected requests per month.")
    avg_input_tokens: int = Field(500, ge=0, description="Average input tokens per request.")
    avg_output_tokens: int = Field(400, ge=0, description="Average output tokens per request.")

    def _monthly(self, input_per_1m: float, output_per_1m: float) -> float:
        tokens_in = self.monthly_requests * self.avg_input_tokens
        tokens_out = self.monthly_requests * self.avg_output_tokens
        return (tokens_in * input_per_1m + tokens_out * output_per_1m) / 1_000_000

    @computed_field  # type: ignore[prop-decorator]
    @property
    def teacher_monthly_cost(self) -> float:
        """Projected monthly cost of serving the teacher, in $."""
        return round(self._monthly(self.teacher_input_per_1m, self.teacher_output_per_1m), 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def student_monthly_cost(self) -> float:
        """Projected monthly cost of serving the student, in $."""
        return round(self._monthly(self.student_input_per_1m, self.student_output_per_1m), 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def monthly_savings(self) -> float:
        """Teacher cost minus student cost per month, in $."""
        return round(self.teacher_monthly_cost - self.student_monthly_cost, 2)

    @property
    def cost_reduction(self) -> float | None:
        """How many times cheaper the student is; None when the student is free."""
        if self.student_monthly_cost <= 0:
            return None
        return self.teacher_monthly_cost / self.student_monthly_cost

    def teacher_cost(self, input_tokens: float, output_tokens: float) -> float:
        """Cost in $ of teacher calls with these token totals."""
        return (
            input_tokens * self.teacher_input_per_1m + output_tokens * self.teacher_output_per_1m
        ) / 1_000_000


# -- 11. Risks and sign-offs -------------------------------------------------------------------


class Risk(_Section):
    """A risk to the plan and how it is mitigated."""

    risk: str = Field(min_length=1, description="What could go wrong.")
    mitigation: str = Field("", description="What reduces it.")
    owner: str = Field("", description="Who watches it.")


class Approver(_Section):
    """Someone whose sign-off the plan needs."""

    role: Role = Field(description="pm, privacy_reviewer, ml_lead, eng_lead or legal.")
    name: str = Field(min_length=1, description="Who holds the role for this plan.")


class SignOffs(_Section):
    """Risks with mitigations and the approvers required by role."""

    risks: list[Risk] = Field(default_factory=list, description="Risks and mitigations.")
    approvers: list[Approver] = Field(
        default_factory=list, description="Approvers required before the plan runs."
    )


# -- the plan ----------------------------------------------------------------------------------


class Plan(BaseModel):
    """A six-month flywheel plan for one AI feature."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: Literal[1] = Field(1, description="Version of the plan file format.")
    goal: FeatureGoal = Field(description="1. Feature and goal.")
    logging: Logging = Field(default_factory=Logging, description="2. What to log.")
    consent: ConsentPolicy = Field(default_factory=ConsentPolicy, description="3. Consent flows.")
    quality_filters: list[QualityFilter] = Field(
        default_factory=list, description="4. Quality filters, applied in this order."
    )
    generation: Generation = Field(
        default_factory=Generation, description="5. Synthetic generation."
    )
    cadence: Cadence = Field(default_factory=Cadence, description="6. Retraining cadence.")
    training: Training = Field(
        default_factory=Training, description="6b. How the student is trained."
    )
    gates: list[Gate] = Field(default_factory=list, description="7. Eval gates.")
    ab_test: ABDesign = Field(default_factory=ABDesign, description="8. A/B design.")
    economics: Economics = Field(default_factory=Economics, description="9. Economics.")
    sign_offs: SignOffs = Field(default_factory=SignOffs, description="11. Risks and sign-offs.")

    def to_data(self) -> dict[str, Any]:
        """The plan as plain JSON-ready data, without derived fields."""
        data = self.model_dump(mode="json", exclude_computed_fields=True)
        return data

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the plan: equal plans give equal fingerprints."""
        canonical = json.dumps(self.to_data(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def uses_production_data(self) -> bool:
        """Whether later cycles train on production interactions (min_new_examples > 0)."""
        return self.cadence.min_new_examples > 0


# -- 10. Timeline (derived) --------------------------------------------------------------------


class CycleMilestones(BaseModel):
    """The milestones of one cycle, derived from the cadence and start month."""

    model_config = ConfigDict(frozen=True)

    cycle: int
    start: date
    end: date
    data_freeze: date
    training_done: date
    eval_done: date
    ab_start: date
    ab_end: date
    decision: date
    uses_production_data: bool

    @property
    def ab_days(self) -> int:
        """Days the cycle leaves for its A/B test."""
        return max(0, (self.ab_end - self.ab_start).days)


def _add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def plan_timeline(plan: Plan) -> list[CycleMilestones]:
    """The cycles that fit in the plan's horizon, each with its milestones.

    Cycle 1 distils the teacher's synthetic data; from cycle 2 on, a cycle also trains on the
    production interactions collected since the previous data freeze (when the plan uses them).
    Within a cycle: collect until the data freeze, train, evaluate, run the A/B test, decide.
    """
    goal, cadence = plan.goal, plan.cadence
    horizon_end = _add_months(goal.start_date, goal.horizon_months)
    cycles: list[CycleMilestones] = []
    start = goal.start_date
    for number in itertools.count(1):
        if cadence.mode == "monthly":
            end = _add_months(goal.start_date, number)
        else:
            end = start + timedelta(weeks=cadence.every_weeks)
        if end > horizon_end:
            break
        freeze = min(start + timedelta(days=cadence.data_freeze_day - 1), end)
        trained = min(freeze + timedelta(days=cadence.training_days), end)
        evaluated = min(trained + timedelta(days=cadence.eval_days), end)
        decision = max(evaluated, end - timedelta(days=cadence.decision_days))
        cycles.append(
            CycleMilestones(
                cycle=number,
                start=start,
                end=end,
                data_freeze=freeze,
                training_done=trained,
                eval_done=evaluated,
                ab_start=evaluated,
                ab_end=decision,
                decision=decision,
                uses_production_data=number > 1 and plan.uses_production_data,
            )
        )
        start = end
    return cycles


def max_grid_cells() -> int:
    """The most cells a generation grid may have (the ``max_grid_cells`` setting)."""
    return settings.max_grid_cells


def check_grid_size(cells: int) -> None:
    """Refuse a grid of more cells than ``max_grid_cells``, before any cell is listed.

    Raises PlanError saying how large the grid is and what the limit is.
    """
    limit = max_grid_cells()
    if cells > limit:
        raise PlanError(
            f"The generation grid has {cells:,} cells, over the limit of {limit:,} "
            "(FLYWHEEL_MAX_GRID_CELLS); use fewer axis values."
        )


def grid_cells(generation: Generation) -> list[dict[str, str]]:
    """Every cell of the generation grid: one mapping of axis name to value per cell.

    Raises PlanError when the grid has more cells than ``max_grid_cells`` (checked first).
    """
    if not generation.axes:
        return []
    check_grid_size(generation.grid_size)
    names = [axis.name for axis in generation.axes]
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(axis.values for axis in generation.axes))
    ]


def system_message_hash(text: str | None) -> str | None:
    """The first 12 hex digits of a system message's sha256 (None for no message): short
    enough to read in a table, the same as DuckDB's ``left(sha256(text), 12)``."""
    if not text:
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
