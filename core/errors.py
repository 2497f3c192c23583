"""The one exception family of Flywheel.

    FlywheelError            base: every error a user can act on
    ├── AccessError          the user's roles do not allow the operation (core.access)
    │   └── SignInError      sign-in is misconfigured or an identity cannot be trusted
    ├── StoreError           the DuckDB store cannot be opened, migrated or written
    ├── PlanError            a plan file or plan edit is malformed
    ├── IngestError          an input file cannot be read at all
    ├── ConsentError         consent or erasure rules refuse an operation
    ├── CycleError           a cycle cannot run (e.g. privacy review not approved)
    │   ├── ThinCycleError   fewer new rows than min_new_examples: no version unless forced
    │   └── TrainingError    a fine-tuning job cannot start, be read, cancelled or resumed
    ├── DatasetError         a dataset version is missing or fails its checks
    ├── GenerationError      synthetic generation cannot start or continue
    ├── EvalError            eval sets, runs or graders fail
    │   └── SandboxUnavailable   graded code cannot be sandboxed here, so it is not run
    ├── GateError            gates cannot be evaluated
    ├── AnalysisError        an A/B test cannot be analysed or designed as asked
    ├── DocumentError        a document cannot be rendered or written
    ├── OutputPathError      an output path is the store, its WAL or a file Flywheel manages
    └── UserTemplateError    a user-written template cannot be rendered (core.templating)
        └── TemplateLimitError   it would exceed a limit: output size, loops, calls

Pages catch ``FlywheelError`` and show ``st.error``; the CLI prints the message on one line
and exits 2. Messages say what to do, not only what went wrong.
"""

from __future__ import annotations

__all__ = [
    "AccessError",
    "AnalysisError",
    "ConsentError",
    "CycleError",
    "DatasetError",
    "DocumentError",
    "EvalError",
    "FlywheelError",
    "GateError",
    "GenerationError",
    "IngestError",
    "OutputPathError",
    "PlanError",
    "SandboxUnavailable",
    "SignInError",
    "StoreError",
    "TemplateLimitError",
    "ThinCycleError",
    "TrainingError",
    "UserTemplateError",
]


class FlywheelError(Exception):
    """An error the user can act on; its message is shown as is."""


class StoreError(FlywheelError):
    """The store cannot be opened, migrated or written."""


class PlanError(FlywheelError):
    """A plan file or a plan edit does not match the plan's schema."""


class IngestError(FlywheelError):
    """An input file cannot be read at all (bad rows are quarantined instead)."""


class ConsentError(FlywheelError):
    """Consent or erasure rules refuse the operation."""


class CycleError(FlywheelError):
    """A cycle cannot run as asked."""


class ThinCycleError(CycleError):
    """A cycle on production data has fewer new rows than the plan's ``min_new_examples``:
    it builds no version unless forced (a check that failed, not bad input)."""


class TrainingError(CycleError):
    """A fine-tuning job cannot start, be read, cancelled or resumed (bad base model, empty
    dataset, a trainer's refusal): nothing is left running and no candidate is set."""


class DatasetError(FlywheelError):
    """A dataset version is missing or fails its checks."""


class GenerationError(FlywheelError):
    """Synthetic generation cannot start or continue."""


class EvalError(FlywheelError):
    """Eval sets, runs or graders fail."""


class SandboxUnavailable(EvalError):
    """No OS sandbox can be made here (bubblewrap missing, user namespaces off): graded code is
    not run, and the grade records this as its error."""


class GateError(FlywheelError):
    """Gates cannot be evaluated."""


class AnalysisError(FlywheelError):
    """An A/B test cannot be analysed or designed as asked (bad inputs, missing metrics)."""


class DocumentError(FlywheelError):
    """A document cannot be rendered or written (format, output path, chart drawing)."""


class OutputPathError(FlywheelError):
    """An output path is refused: the store, its WAL or another file Flywheel manages."""


class UserTemplateError(FlywheelError):
    """A user-written template (prompt template, judge rubric) does not parse, names an
    unknown value or reaches for something the sandbox refuses."""


class TemplateLimitError(UserTemplateError):
    """A user-written template would exceed a limit: output size, loops or calls."""


class AccessError(FlywheelError):
    """The user's roles do not allow the operation."""


class SignInError(AccessError):
    """Sign-in is misconfigured, or a signed-in identity cannot be trusted: nobody may act."""
