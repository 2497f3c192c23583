"""The datasheet of a dataset version: lineage, the system message its rows train under,
composition per cell, filters with their parameters and known limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.charts import composition_heatmap_figure
from core.cycle_reads import cycle_runs
from core.datasets import get_version
from core.documents.rendering import DocumentContext, document
from core.documents.sections import _version_values
from core.store import Store


def _system_values(lineage: Mapping[str, Any], production: int) -> dict[str, Any] | None:
    """What the datasheet says of the version's system message and its production rows' logged
    ones; None for a version built before versions recorded it."""
    recorded = lineage.get("system_message")
    if recorded is None:
        return None
    policy_name = str(recorded["production_rows"])
    different, other, none = (
        int(recorded["logged_different"]),
        int(recorded["logged_other"]),
        int(recorded["logged_none"]),
    )
    if recorded["text"]:
        differ = (
            f"{different:,} of {production:,} logged a different one "
            f"({other:,} another text, {none:,} none)"
        )
    else:
        differ = f"{different:,} of {production:,} logged one"
    if not production:
        policy = f"The version holds no production rows (production_system {policy_name})."
    elif policy_name == "plan":
        policy = (
            f"Production rows train {'under it' if recorded['text'] else 'without one'} too, "
            f"whatever they logged (production_system plan): {differ}, replaced here."
        )
    else:
        policy = (
            "Production rows keep the system text they logged (production_system logged): "
            f"{differ}, and train under it."
        )
    return {
        "text": recorded["text"],
        "hash": recorded["hash"],
        "policy": policy,
        "messages": len(recorded.get("carried", [])),
    }


@document("datasheet", "Datasheet", "dataset")
def build_datasheet(*, store: Store, version_id: str) -> DocumentContext:
    """A dataset version: lineage, composition per cell, filters with parameters, known limits."""
    version = get_version(store, version_id)
    lineage = version.lineage
    cells = list(version.composition.get("cells", []))
    axes = sorted({axis for cell in cells for axis in cell["cell"]})
    run = next((r for r in cycle_runs(store, version.plan_id) if r["run_id"] == version.run_id), {})
    limits = list(run.get("warnings", []))
    thin = [c for c in cells if int(c["production"]) + int(c["synthetic"]) < 3]
    if thin:
        limits.append(f"{len(thin)} cell(s) hold fewer than 3 rows; scores on them are noisy.")
    if version.rows_now != version.rows:
        limits.append(f"{version.rows - version.rows_now} row(s) were erased since the build.")
    if version.synthetic_rows:
        limits.append(
            f"{version.synthetic_rows} row(s) are synthetic: written by the teacher, not by users."
        )
    system = _system_values(lineage, version.production_rows)
    if system is not None and system["messages"] > 1:
        limits.append(
            f"The rows carry {system['messages']} different system messages (or none): the "
            "student learns under more than the one prompt it is served with."
        )
    values = {
        "dataset": _version_values(version),
        "system": system,
        "plan_id": version.plan_id,
        "window": lineage.get("window"),
        "batches": list(lineage.get("batches", [])),
        "synthetic_specs": list(lineage.get("synthetic_specs", [])),
        "filters": [
            {
                "name": f["name"],
                "rule": f["rule"],
                "origin": f["origin"],
                "parameters": "; ".join(f"{k} {v}" for k, v in sorted(f["params"].items())),
            }
            for f in lineage.get("filters", [])
        ],
        "axes": axes,
        "cells": [
            {
                "cell": " · ".join(str(c["cell"].get(a, "(unlabelled)")) for a in axes),
                "production": c["production"],
                "synthetic": c["synthetic"],
            }
            for c in cells
        ],
        "limits": limits,
    }
    figures = {"composition": composition_heatmap_figure(cells, axes)} if cells and axes else {}
    return DocumentContext(values, figures)
