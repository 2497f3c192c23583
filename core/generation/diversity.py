"""How varied each cell's valid examples are: exact and near-duplicates (Jaccard within the
cell), the spread of answer lengths, and the shortfall that a top-up fills.

Ibis (through core.quality's near-duplicates) loads where the read-out runs: a dry run does not
import it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from core.generation.spec import GenerationSpec, cell_key
from core.store import Store


@dataclass(frozen=True)
class CellDiversity:
    """How varied one cell's valid examples are, and whether it reached its target."""

    cell: dict[str, str]
    cell_key: str
    target: int
    valid: int
    failed: int
    unique_exact: int
    unique: int
    length_mean: float
    length_std: float
    length_min: int
    length_max: int

    @property
    def unique_rate(self) -> float:
        """Share of valid examples left after removing exact and near-duplicates."""
        return self.unique / self.valid if self.valid else 0.0

    @property
    def exact_unique_rate(self) -> float:
        """Share of valid examples left after removing exact duplicates only."""
        return self.unique_exact / self.valid if self.valid else 0.0

    @property
    def length_cv(self) -> float:
        """Coefficient of variation of the answer lengths (spread relative to the mean)."""
        return self.length_std / self.length_mean if self.length_mean else 0.0

    @property
    def shortfall(self) -> int:
        """Unique examples missing to reach the target."""
        return max(0, self.target - self.unique)

    @property
    def under_target(self) -> bool:
        """Whether the cell holds fewer unique valid examples than the plan asks for."""
        return self.shortfall > 0


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def cell_diversity(
    store: Store, spec: GenerationSpec, *, threshold: float = 0.8
) -> list[CellDiversity]:
    """Per cell of the grid: valid and failed counts, unique rate (exact and near-duplicate,
    Jaccard ≥ ``threshold`` within the cell) and the spread of answer lengths."""
    from core.quality import near_duplicate_groups, near_duplicate_pairs

    rows = store.fetch_all(
        "SELECT cell_key, item_index, status, coalesce(question, '') || ' ' ||"
        " coalesce(answer, ''), length(coalesce(answer, ''))"
        " FROM generated_examples WHERE spec_hash = ?",
        [spec.spec_hash],
    )
    with store.connect() as con:
        con.execute(
            "CREATE TEMP TABLE __gen_texts AS SELECT cell_key || '#' || item_index AS id,"
            " coalesce(question, '') || ' ' || coalesce(answer, '') AS text"
            " FROM generated_examples WHERE spec_hash = ? AND status = 'valid'",
            [spec.spec_hash],
        )
        try:
            pairs = near_duplicate_pairs(con, "__gen_texts", threshold=threshold)
        finally:
            con.execute("DROP TABLE IF EXISTS __gen_texts")
    same_cell = [p for p in pairs if str(p.id_a).rsplit("#", 1)[0] == str(p.id_b).rsplit("#", 1)[0]]
    groups = near_duplicate_groups(same_cell)
    redundant = {i for i, root in groups.items() if i != root}
    by_cell: dict[str, list[tuple[int, str, str, int]]] = defaultdict(list)
    for key, index, status, text, length in rows:
        by_cell[str(key)].append((int(index), str(status), str(text), int(length)))
    target = spec.plan.generation.examples_per_cell
    reports: list[CellDiversity] = []
    for cell in spec.cells:
        key = cell_key(cell)
        entries = by_cell.get(key, [])
        valid = [e for e in entries if e[1] == "valid"]
        lengths = [e[3] for e in valid]
        texts: dict[str, int] = {}
        for index, _, text, _ in sorted(valid):
            texts.setdefault(_normalise(text), index)
        exact_keep = set(texts.values())
        unique = sum(1 for i in exact_keep if f"{key}#{i}" not in redundant)
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        var = sum((x - mean) ** 2 for x in lengths) / (len(lengths) - 1) if len(lengths) > 1 else 0
        reports.append(
            CellDiversity(
                cell=cell,
                cell_key=key,
                target=target,
                valid=len(valid),
                failed=sum(1 for e in entries if e[1] == "failed"),
                unique_exact=len(exact_keep),
                unique=unique,
                length_mean=mean,
                length_std=var**0.5,
                length_min=min(lengths, default=0),
                length_max=max(lengths, default=0),
            )
        )
    return reports
