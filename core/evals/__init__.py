"""Evals: sets with frozen versions, runs on OpenAI-compatible endpoints, imported results.

``sets`` holds eval items and set versions (import, list, freeze); ``runs`` asks a model for
each item and grades its outputs; ``results`` imports results produced elsewhere and reads what
runs and imports stored (summaries, paired comparisons, slice means, judge agreement).

A name re-exported here is bound once: code that reads it (``run_summary`` reading
``item_scores``, ``run_eval`` reading ``load_items``) reads it from its own module, so a test
that patches a name patches it there (``core.evals.results.item_scores``), not here.
"""

from __future__ import annotations

from core.evals.results import (
    ResultsImport,
    import_results,
    item_scores,
    judge_agreement_for_run,
    list_runs,
    paired_comparison,
    record_results,
    run_summary,
    run_usage,
    slice_means,
)
from core.evals.runs import (
    IN_PROCESS,
    ROLES,
    EvalRunReport,
    JudgeConfig,
    ProgressCallback,
    Role,
    candidate_system_message,
    eval_endpoint,
    judge_endpoint,
    run_eval,
)
from core.evals.sets import (
    EvalItem,
    EvalSetImport,
    eval_sets,
    freeze_set_version,
    freeze_used_version,
    import_eval_set,
    load_items,
    resolve_version,
    set_versions,
    slice_dimensions,
)

__all__ = [
    "IN_PROCESS",
    "ROLES",
    "EvalItem",
    "EvalRunReport",
    "EvalSetImport",
    "JudgeConfig",
    "ProgressCallback",
    "ResultsImport",
    "Role",
    "candidate_system_message",
    "eval_endpoint",
    "eval_sets",
    "freeze_set_version",
    "freeze_used_version",
    "import_eval_set",
    "import_results",
    "item_scores",
    "judge_agreement_for_run",
    "judge_endpoint",
    "list_runs",
    "load_items",
    "paired_comparison",
    "record_results",
    "resolve_version",
    "run_eval",
    "run_summary",
    "run_usage",
    "set_versions",
    "slice_dimensions",
    "slice_means",
]
