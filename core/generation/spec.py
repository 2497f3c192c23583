"""The generation spec of one plan version, and the items of its grid.

Each item of the grid is keyed by (spec hash, cell, index). The spec hash covers what shapes a
reply (teacher model, prompt template, output schema, temperature), so changing any of them starts
a fresh dataset while a rerun of the same spec asks only for what is not stored yet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from core.errors import GenerationError
from core.plan import Plan, grid_cells
from core.plan_versions import load_plan
from core.store import Store

BATCH_DISCOUNT = 0.5


def cell_key(cell: dict[str, str]) -> str:
    """Canonical JSON of a cell: the key under which its items are stored."""
    return json.dumps(cell, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class GenerationSpec:
    """What generation runs for one plan version, with the hashes that key its items."""

    plan_id: str
    plan_version: int
    plan: Plan

    @property
    def teacher_model(self) -> str:
        """The generating model: the section's own, else the plan's teacher."""
        return self.plan.generation.teacher_model or self.plan.goal.teacher_model

    @property
    def template_hash(self) -> str:
        """sha256 (16 hex digits) of the prompt template."""
        return _sha(self.plan.generation.prompt_template)[:16]

    @property
    def spec_hash(self) -> str:
        """Hash of what shapes a reply: model, template, schema and temperature."""
        gen = self.plan.generation
        canonical = json.dumps(
            {
                "model": self.teacher_model,
                "template": gen.prompt_template,
                "schema": gen.output_schema,
                "temperature": gen.temperature,
            },
            sort_keys=True,
        )
        return _sha(canonical)[:16]

    @property
    def cells(self) -> list[dict[str, str]]:
        """Every cell of the grid."""
        return grid_cells(self.plan.generation)

    def cost(self, input_tokens: int, output_tokens: int, *, batch: bool = False) -> float:
        """Teacher cost in $ of these tokens at the plan's prices (half price in batch mode)."""
        factor = BATCH_DISCOUNT if batch else 1.0
        return self.plan.economics.teacher_cost(input_tokens, output_tokens) * factor

    @classmethod
    def load(cls, store: Store, plan_id: str, version: int | None = None) -> GenerationSpec:
        """The spec of a stored plan version; raises GenerationError for an empty grid."""
        plan, number = load_plan(store, plan_id, version)
        spec = cls(plan_id, number, plan)
        if not spec.cells:
            raise GenerationError(
                f"Plan '{plan_id}' has no generation grid: add axes with values on the Plan page."
            )
        if not plan.generation.prompt_template.strip():
            raise GenerationError(
                f"Plan '{plan_id}' has no prompt template: write generation.prompt_template."
            )
        return spec


@dataclass(frozen=True)
class WorkItem:
    """One example to generate: its cell and its index within the cell."""

    cell: dict[str, str]
    index: int

    @property
    def key(self) -> tuple[str, int]:
        """(cell key, index): with the spec hash, the item's identity in the store."""
        return cell_key(self.cell), self.index
