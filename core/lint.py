"""Consistency checks over a plan: the contradictions a reviewer would otherwise catch too late.

Each check is a function registered with ``@check``; it yields ``Finding``s with a stable code, a
path into the plan (``gates[1].margin``), a severity and a message that says how to fix it. A plan
with errors can be saved as a draft but is not ready to run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from core.plan import (
    TRAINING_BACKEND_LABELS,
    TRAINING_BACKEND_LAST_DAY,
    Plan,
    max_grid_cells,
    plan_timeline,
)
from core.plan_files import validation_messages
from core.secrets import url_credentials, urls_in
from core.settings import settings
from core.stats import ab_duration_days, sample_size_per_arm
from core.templating import template_problems

__all__ = [
    "CHECKS",
    "Finding",
    "LintReport",
    "ab_requirement",
    "generation_estimate_usd",
    "lint_data",
    "lint_plan",
    "student_system_max_tokens",
]

Severity = Literal["error", "warning"]
Check = Callable[[Plan], Iterator["Finding"]]

CHECKS: dict[str, Check] = {}


@dataclass(frozen=True)
class Finding:
    """One problem in a plan: where it is, how bad, and how to fix it."""

    code: str
    path: str
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, str]:
        """The finding as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class LintReport:
    """Every finding of one lint run, errors first."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """Findings that make the plan not ready."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings worth a look that do not block."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ready(self) -> bool:
        """Whether the plan has no errors."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """``errors`` and ``warnings``, each a list of findings as dicts."""
        return {
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
        }


def check(code: str) -> Callable[[Check], Check]:
    """Register a lint check under the code of the findings it emits."""

    def register(fn: Check) -> Check:
        CHECKS[code] = fn
        return fn

    return register


def lint_plan(plan: Plan) -> LintReport:
    """Run every check over a valid plan."""
    findings = [finding for fn in CHECKS.values() for finding in fn(plan)]
    findings.sort(key=lambda f: (f.severity != "error", f.path, f.code))
    return LintReport(findings)


def lint_data(data: dict[str, Any]) -> tuple[Plan | None, LintReport]:
    """Validate plan data, then lint it; schema problems come back as SCHEMA errors."""
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        findings = [
            Finding("SCHEMA", path, "error", f"{reason}.")
            for path, reason in validation_messages(exc)
        ]
        return None, LintReport(findings)
    return plan, lint_plan(plan)


# -- ownership and sign-offs -------------------------------------------------------------------


@check("OWNER_MISSING")
def _owner(plan: Plan) -> Iterator[Finding]:
    if not plan.goal.owner.strip():
        yield Finding("OWNER_MISSING", "goal.owner", "error", "Name the PM who owns this plan.")


@check("APPROVERS_MISSING")
def _approvers(plan: Plan) -> Iterator[Finding]:
    approvers = plan.sign_offs.approvers
    if not approvers:
        yield Finding(
            "APPROVERS_MISSING",
            "sign_offs.approvers",
            "error",
            "Add the approvers required before the plan runs (at least a PM and an ML lead).",
        )
    elif plan.uses_production_data and not any(a.role == "privacy_reviewer" for a in approvers):
        yield Finding(
            "APPROVERS_MISSING",
            "sign_offs.approvers",
            "error",
            "The plan trains on production data: add a privacy_reviewer approver.",
        )


# -- logging, retention and PII ----------------------------------------------------------------


@check("RETENTION_EXCEEDS_CONSENT")
def _retention(plan: Plan) -> Iterator[Finding]:
    limit = plan.consent.retention_limit_days
    for i, logged in enumerate(plan.logging.fields):
        if logged.pii_class in {"direct_identifier", "free_text"} and logged.retention_days > limit:
            yield Finding(
                "RETENTION_EXCEEDS_CONSENT",
                f"logging.fields[{i}].retention_days",
                "error",
                f"'{logged.name}' ({logged.pii_class.replace('_', ' ')}) is kept "
                f"{logged.retention_days} days but the consent policy allows {limit}; "
                f"lower it to {limit} or less.",
            )


@check("FREE_TEXT_UNREDACTED")
def _free_text(plan: Plan) -> Iterator[Finding]:
    free_text = [f.name for f in plan.logging.fields if f.pii_class == "free_text"]
    redacts = any(f.rule == "pii_redacted" for f in plan.quality_filters)
    if free_text and not redacts:
        yield Finding(
            "FREE_TEXT_UNREDACTED",
            "quality_filters",
            "error",
            f"Free text is logged ({', '.join(free_text)}) but no pii_redacted filter runs; "
            "add one as the first quality filter.",
        )


@check("REDACTION_NOT_FIRST")
def _redaction_order(plan: Plan) -> Iterator[Finding]:
    rules = [f.rule for f in plan.quality_filters]
    if "pii_redacted" in rules and rules.index("pii_redacted") > 0:
        yield Finding(
            "REDACTION_NOT_FIRST",
            f"quality_filters[{rules.index('pii_redacted')}]",
            "warning",
            "PII redaction runs after other filters, which then see raw PII; move it first.",
        )


@check("DUPLICATE_LOGGED_FIELD")
def _duplicate_fields(plan: Plan) -> Iterator[Finding]:
    counts = Counter(f.name for f in plan.logging.fields)
    for i, logged in enumerate(plan.logging.fields):
        if counts[logged.name] > 1:
            yield Finding(
                "DUPLICATE_LOGGED_FIELD",
                f"logging.fields[{i}].name",
                "error",
                f"'{logged.name}' is listed {counts[logged.name]} times; keep one entry.",
            )


# -- consent -----------------------------------------------------------------------------------


@check("NO_TRAINING_CONSENT")
def _training_scope(plan: Plan) -> Iterator[Finding]:
    if plan.uses_production_data and "training" not in plan.consent.scopes:
        yield Finding(
            "NO_TRAINING_CONSENT",
            "consent.scopes",
            "error",
            "Production interactions are used for training (cadence.min_new_examples > 0) but "
            "no 'training' consent scope is asked for; add it, or set min_new_examples to 0.",
        )


@check("OPT_IN_DEFAULT_GRANTED")
def _opt_in_default(plan: Plan) -> Iterator[Finding]:
    for i, flow in enumerate(plan.consent.flows):
        if flow.mechanism == "opt_in" and flow.default_state == "granted":
            yield Finding(
                "OPT_IN_DEFAULT_GRANTED",
                f"consent.flows[{i}].default_state",
                "error",
                f"{flow.segment} is opt-in, so consent cannot start as granted; "
                "set default_state to not_granted.",
            )


@check("NO_CONSENT_FLOW")
def _no_flows(plan: Plan) -> Iterator[Finding]:
    if plan.uses_production_data and not plan.consent.flows:
        yield Finding(
            "NO_CONSENT_FLOW",
            "consent.flows",
            "error",
            "Describe how consent is collected in at least one jurisdiction or segment.",
        )


@check("PRIVACY_REVIEW_LATE")
def _privacy_review(plan: Plan) -> Iterator[Finding]:
    production = [c for c in plan_timeline(plan) if c.uses_production_data]
    if not production:
        return
    first = production[0]
    review = plan.consent.privacy_review
    path = "consent.privacy_review.status"
    if review.status == "rejected":
        yield Finding(
            "PRIVACY_REVIEW_LATE",
            path,
            "error",
            f"The privacy review was rejected but cycle {first.cycle} uses production data; "
            "address the review's notes or stop using production data.",
        )
    elif review.status != "approved":
        yield Finding(
            "PRIVACY_REVIEW_LATE",
            path,
            "warning",
            f"Cycle {first.cycle} uses production data from {first.start}; the privacy review "
            "must be approved by then or the cycle will refuse to run.",
        )
    elif review.decided_on is None:
        yield Finding(
            "PRIVACY_REVIEW_LATE",
            "consent.privacy_review.decided_on",
            "error",
            "An approved privacy review needs the date it was approved.",
        )
    elif review.decided_on > first.start:
        yield Finding(
            "PRIVACY_REVIEW_LATE",
            "consent.privacy_review.decided_on",
            "error",
            f"Cycle {first.cycle} starts using production data on {first.start}, before the "
            f"privacy review's approval on {review.decided_on}; move the cycle or the review.",
        )


# -- cadence and timeline ----------------------------------------------------------------------


@check("TOO_FEW_CYCLES")
def _cycles(plan: Plan) -> Iterator[Finding]:
    count = len(plan_timeline(plan))
    if count < 2:
        yield Finding(
            "TOO_FEW_CYCLES",
            "cadence",
            "error",
            f"The horizon holds {count} cycle(s); a flywheel needs at least two. Shorten the "
            "cadence or lengthen goal.horizon_months.",
        )


@check("MIX_INFEASIBLE")
def _mix(plan: Plan) -> Iterator[Finding]:
    cadence = plan.cadence
    smallest = cadence.min_new_examples * (1 + cadence.original_to_new_ratio)
    if smallest > cadence.max_dataset_size:
        yield Finding(
            "MIX_INFEASIBLE",
            "cadence.max_dataset_size",
            "error",
            f"{cadence.min_new_examples} new rows at {cadence.original_to_new_ratio:g} original "
            f"per new row make at least {smallest:.0f} rows, more than the maximum of "
            f"{cadence.max_dataset_size}; raise the maximum or lower the ratio.",
        )
    synthetic = plan.generation.grid_size * plan.generation.examples_per_cell
    wanted = cadence.min_new_examples * cadence.original_to_new_ratio
    if synthetic and wanted > synthetic:
        yield Finding(
            "MIX_INFEASIBLE",
            "cadence.original_to_new_ratio",
            "warning",
            f"The ratio asks for {wanted:.0f} original rows per cycle but the grid generates "
            f"{synthetic}; lower the ratio or generate more examples per cell.",
        )


@check("FREEZE_AFTER_CYCLE")
def _freeze(plan: Plan) -> Iterator[Finding]:
    timeline = plan_timeline(plan)
    shortest = min(((c.end - c.start).days for c in timeline), default=None)
    if shortest is not None and plan.cadence.data_freeze_day > shortest:
        yield Finding(
            "FREEZE_AFTER_CYCLE",
            "cadence.data_freeze_day",
            "error",
            f"The data freeze on day {plan.cadence.data_freeze_day} falls after the shortest "
            f"cycle ends ({shortest} days); freeze earlier.",
        )


# -- A/B test ----------------------------------------------------------------------------------


@check("AB_ARMS")
def _arms(plan: Plan) -> Iterator[Finding]:
    arms = plan.ab_test.arms
    if len(arms) < 2:
        yield Finding(
            "AB_ARMS", "ab_test.arms", "error", "An A/B test needs a control and a treatment arm."
        )
        return
    total = sum(a.traffic_share for a in arms)
    if abs(total - 1) > 1e-6:
        yield Finding(
            "AB_ARMS",
            "ab_test.arms",
            "error",
            f"Traffic shares add up to {total:.3g}; make them add up to 1.",
        )


def ab_requirement(plan: Plan) -> tuple[int, int]:
    """(users per arm, days) the plan's A/B test needs; ValueError when it is undefined."""
    ab = plan.ab_test
    n = sample_size_per_arm(
        ab.baseline_rate, ab.mde, relative=ab.mde_relative, alpha=ab.alpha, power=ab.power
    )
    return n, ab_duration_days(n, ab.daily_traffic, [a.traffic_share for a in ab.arms])


@check("AB_TOO_LONG")
def _ab_duration(plan: Plan) -> Iterator[Finding]:
    ab = plan.ab_test
    if len(ab.arms) < 2:
        return
    try:
        n, days = ab_requirement(plan)
    except ValueError:
        yield Finding(
            "AB_TOO_LONG",
            "ab_test.mde",
            "error",
            "baseline_rate plus the MDE must stay a proportion between 0 and 1.",
        )
        return
    timeline = plan_timeline(plan)
    available = min((c.ab_days for c in timeline), default=0)
    if timeline and days > available:
        yield Finding(
            "AB_TOO_LONG",
            "ab_test.daily_traffic",
            "error",
            f"The A/B test needs {n:,} users per arm, {days} days at {ab.daily_traffic:,} "
            f"users a day, but a cycle leaves {available} days for it; raise the MDE or the "
            "traffic, or lengthen the cadence.",
        )


# -- gates -------------------------------------------------------------------------------------


@check("NO_REGRESSION_GATE")
def _regression_gate(plan: Plan) -> Iterator[Finding]:
    if not any(g.comparator == "no_regression" and g.blocking for g in plan.gates):
        yield Finding(
            "NO_REGRESSION_GATE",
            "gates",
            "error",
            "No blocking gate guards against regression from the production model; add a "
            "no_regression gate with a margin.",
        )


@check("NI_RATIO_RANGE")
def _ni_ratio(plan: Plan) -> Iterator[Finding]:
    for i, gate in enumerate(plan.gates):
        if gate.comparator == "non_inferiority" and gate.ratio is not None:
            if not 0.5 <= gate.ratio <= 1:
                yield Finding(
                    "NI_RATIO_RANGE",
                    f"gates[{i}].ratio",
                    "error",
                    f"A non-inferiority ratio of {gate.ratio:g} is meaningless; use a share of "
                    "the teacher's quality between 0.5 and 1 (e.g. 0.95).",
                )
            elif abs(gate.ratio - plan.goal.target_quality_retention) > 1e-9:
                yield Finding(
                    "NI_RATIO_RANGE",
                    f"gates[{i}].ratio",
                    "warning",
                    f"The gate keeps {gate.ratio:g} of the teacher's quality but the goal is "
                    f"{plan.goal.target_quality_retention:g}; align them.",
                )


_GATE_PARAMETER = {
    "absolute": "threshold",
    "no_regression": "margin",
    "non_inferiority": "ratio",
    "cost": "threshold",
    "latency": "threshold",
}


@check("GATE_PARAMETER_MISSING")
def _gate_params(plan: Plan) -> Iterator[Finding]:
    for i, gate in enumerate(plan.gates):
        needed = _GATE_PARAMETER[gate.comparator]
        if getattr(gate, needed) is None:
            yield Finding(
                "GATE_PARAMETER_MISSING",
                f"gates[{i}].{needed}",
                "error",
                f"A {gate.comparator.replace('_', '-')} gate needs a {needed}.",
            )
        if gate.comparator in {"absolute", "no_regression", "non_inferiority"} and not (
            gate.eval_set.strip()
        ):
            yield Finding(
                "GATE_PARAMETER_MISSING",
                f"gates[{i}].eval_set",
                "error",
                f"Gate '{gate.name}' needs the eval set it is measured on.",
            )


# -- generation and economics ------------------------------------------------------------------


@check("AXIS_VALUES")
def _axes(plan: Plan) -> Iterator[Finding]:
    names = Counter(a.name for a in plan.generation.axes)
    for i, axis in enumerate(plan.generation.axes):
        if names[axis.name] > 1:
            yield Finding(
                "AXIS_VALUES",
                f"generation.axes[{i}].name",
                "error",
                f"Two axes are named '{axis.name}'; rename one.",
            )
        if not axis.values:
            yield Finding(
                "AXIS_VALUES",
                f"generation.axes[{i}].values",
                "error",
                f"Axis '{axis.name}' has no values, so the grid is empty; add values or remove it.",
            )
        repeated = sorted(v for v, n in Counter(axis.values).items() if n > 1)
        if repeated:
            yield Finding(
                "AXIS_VALUES",
                f"generation.axes[{i}].values",
                "error",
                f"Axis '{axis.name}' repeats {', '.join(repeated)}; each value once.",
            )


def generation_estimate_usd(plan: Plan) -> float:
    """Estimated teacher cost of generating the whole grid, from the plan's token estimates."""
    gen = plan.generation
    examples = gen.grid_size * gen.examples_per_cell
    return plan.economics.teacher_cost(
        examples * gen.expected_input_tokens, examples * gen.expected_output_tokens
    )


@check("GENERATION_OVER_BUDGET")
def _budget(plan: Plan) -> Iterator[Finding]:
    cost = generation_estimate_usd(plan)
    if cost > plan.generation.budget_usd:
        gen = plan.generation
        yield Finding(
            "GENERATION_OVER_BUDGET",
            "generation.budget_usd",
            "error",
            f"{gen.grid_size} cells × {gen.examples_per_cell} examples is estimated at "
            f"${cost:,.2f}, over the ${gen.budget_usd:,.2f} cap; raise the cap or generate less.",
        )


@check("TEMPLATE_AXES")
def _template(plan: Plan) -> Iterator[Finding]:
    gen = plan.generation
    if gen.axes and not gen.prompt_template.strip():
        yield Finding(
            "TEMPLATE_AXES",
            "generation.prompt_template",
            "error",
            "Write the prompt template the teacher receives for each cell.",
        )
        return
    for i, axis in enumerate(gen.axes):
        if axis.name.isidentifier() and axis.name not in gen.prompt_template:
            yield Finding(
                "TEMPLATE_AXES",
                f"generation.axes[{i}].name",
                "warning",
                f"The prompt template never mentions '{{{{ {axis.name} }}}}', so every value of "
                "that axis gets the same prompt.",
            )


@check("TEMPLATE_UNSAFE")
def _template_unsafe(plan: Plan) -> Iterator[Finding]:
    gen = plan.generation
    names = [a.name for a in gen.axes if a.name.isidentifier()] + ["cell", "index"]
    for problem in template_problems(gen.prompt_template, names):
        yield Finding(
            "TEMPLATE_UNSAFE",
            "generation.prompt_template",
            "error",
            f"The prompt template {problem}. A template may only use the axis values (by name, "
            "cell['name'] or index), plain filters, literals, and if / for over them.",
        )


@check("GRID_TOO_LARGE")
def _grid_too_large(plan: Plan) -> Iterator[Finding]:
    gen = plan.generation
    limit = max_grid_cells()
    if gen.grid_size > limit:
        counts = " × ".join(str(len(a.values)) for a in gen.axes)
        yield Finding(
            "GRID_TOO_LARGE",
            "generation.axes",
            "error",
            f"The grid has {gen.grid_size:,} cells ({counts}), over the limit of {limit:,} "
            "(FLYWHEEL_MAX_GRID_CELLS); use fewer axis values.",
        )


# -- the student's system message ---------------------------------------------------------------

# Output schemas whose examples the teacher writes in a specialised assistant's voice: the
# student learns those answers for the role a system message sets ("qa" assumes none).
_ROLE_SCHEMAS = {"coding_qa": "a coding assistant", "support_qa": "a support assistant"}


def _system_assumed_by(plan: Plan) -> str | None:
    """Why the plan's examples assume a system message, or None when nothing does."""
    gen = plan.generation
    role = _ROLE_SCHEMAS.get(gen.output_schema)
    if role and gen.axes and gen.prompt_template.strip():
        return f"the teacher writes its {gen.output_schema} examples as {role}"
    if any(f.name == "system" for f in plan.logging.fields):
        return "production logs a system prompt (logging.fields has 'system')"
    return None


def student_system_max_tokens() -> int:
    """The token budget of the student's system message (``student_system_max_tokens``)."""
    return settings.student_system_max_tokens


@check("STUDENT_SYSTEM_MISSING")
def _student_system_missing(plan: Plan) -> Iterator[Finding]:
    reason = _system_assumed_by(plan)
    if plan.goal.system_message is None and reason:
        yield Finding(
            "STUDENT_SYSTEM_MISSING",
            "goal.student_system_message",
            "warning",
            f"The student has no system message, yet {reason}: it would learn those answers "
            "under no prompt and be served under another. Write the system message it is "
            "served with (e.g. 'You are a Python expert.').",
        )


@check("STUDENT_SYSTEM_TOO_LONG")
def _student_system_too_long(plan: Plan) -> Iterator[Finding]:
    message = plan.goal.system_message
    if message is None:
        return
    from core.tokens import text_tokens  # tiktoken only when there is a message to count

    tokens, budget = text_tokens(message), student_system_max_tokens()
    if tokens > budget:
        yield Finding(
            "STUDENT_SYSTEM_TOO_LONG",
            "goal.student_system_message",
            "warning",
            f"The student's system message is about {tokens:,} tokens, over the budget of "
            f"{budget:,} (FLYWHEEL_STUDENT_SYSTEM_MAX_TOKENS): it rides in every training "
            "example and every served request. Shorten it.",
        )


@check("TRAINING_BACKEND_CLOSED")
def _training_backend_closed(plan: Plan) -> Iterator[Finding]:
    backend = plan.training.backend
    last_day = TRAINING_BACKEND_LAST_DAY.get(backend)
    if last_day is None:
        return
    late = [c for c in plan_timeline(plan) if c.training_done >= last_day]
    if late:
        others = ", ".join(b for b in TRAINING_BACKEND_LABELS if b != backend)
        yield Finding(
            "TRAINING_BACKEND_CLOSED",
            "training.backend",
            "error",
            f"{TRAINING_BACKEND_LABELS[backend].removeprefix('on ')} takes no new fine-tuning "
            f"jobs after {last_day.isoformat()}, yet cycle {late[0].cycle} trains on "
            f"{late[0].training_done.isoformat()}"
            + (f" ({len(late)} cycles in all)" if len(late) > 1 else "")
            + f"; choose another backend ({others}).",
        )


@check("TRAINING_BASE_MODEL_MISSING")
def _training_base_model(plan: Plan) -> Iterator[Finding]:
    if plan.training.backend == "local" and not plan.training.local.base_model.strip():
        yield Finding(
            "TRAINING_BASE_MODEL_MISSING",
            "training.local.base_model",
            "error",
            "Local training needs an open-weights base model: a local directory or a Hugging "
            "Face model id already in the local cache (e.g. Qwen/Qwen2.5-Coder-1.5B-Instruct).",
        )


# (field, lowest, highest, what it is): LoRA settings outside these train badly or not at all.
_LORA_RANGES: dict[str, tuple[float, float, str]] = {
    "lora_rank": (1, 256, "the LoRA rank"),
    "lora_alpha": (1, 1024, "LoRA alpha"),
    "lora_dropout": (0.0, 0.5, "LoRA dropout"),
    "learning_rate": (1e-7, 1e-2, "the learning rate"),
    "max_seq_length": (32, 131_072, "the longest sequence"),
}


@check("LORA_OUT_OF_RANGE")
def _lora_ranges(plan: Plan) -> Iterator[Finding]:
    backend = plan.training.backend
    if backend not in ("local", "together"):
        return
    settings = plan.training.local if backend == "local" else plan.training.together
    for name, (low, high, what) in _LORA_RANGES.items():
        value = getattr(settings, name, None)
        if value is not None and not low <= value <= high:
            yield Finding(
                "LORA_OUT_OF_RANGE",
                f"training.{backend}.{name}",
                "error",
                f"{what[:1].upper()}{what[1:]} is {value:g}; keep it between {low:g} and {high:g}.",
            )
    if backend == "local" and not [m for m in plan.training.local.target_modules if m.strip()]:
        yield Finding(
            "LORA_OUT_OF_RANGE",
            "training.local.target_modules",
            "error",
            "Name the modules that get LoRA adapters (e.g. q_proj, v_proj), or all-linear.",
        )


@check("SAVINGS_BELOW_TARGET")
def _savings(plan: Plan) -> Iterator[Finding]:
    factor = plan.economics.cost_reduction
    target = plan.goal.target_cost_reduction
    if factor is not None and factor < target:
        yield Finding(
            "SAVINGS_BELOW_TARGET",
            "economics.student_output_per_1m",
            "warning",
            f"At these prices the student is {factor:.1f}x cheaper than the teacher, short of "
            f"the {target:g}x target.",
        )


# -- secrets -----------------------------------------------------------------------------------


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every text in plan data with its path (``generation.endpoint``, ``gates[1].name``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


@check("ENDPOINT_CREDENTIALS")
def _endpoint_credentials(plan: Plan) -> Iterator[Finding]:
    for path, text in _strings(plan.to_data(), ""):
        for url in urls_in(text):
            found = url_credentials(url)
            if found:
                yield Finding(
                    "ENDPOINT_CREDENTIALS",
                    path,
                    "error",
                    f"This URL carries {' and '.join(found)}; a plan is shared, versioned and "
                    "exported, so keys never belong in it (they are removed when it is saved). "
                    "Put the key in OPENAI_API_KEY, FLYWHEEL_TEACHER_API_KEY or "
                    "TOGETHER_API_KEY, or the dashboard's secrets.",
                )
