"""The log contract a person reads (the Data page's uploader, the README) is the one ingest
validates against, its sample files load whole, and a load that takes nothing is no success."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

from core.access import local_operator
from core.ingest import CONSENT_FIELDS, EVAL_ITEM_FIELDS, INTERACTION_FIELDS, ingest_file
from core.log_contract import (
    SAMPLE_FILES,
    contract,
    contract_markdown,
    example_line,
    load_outcome,
)
from core.store import Store

README = (ROOT / "README.md").read_text(encoding="utf-8")
SPECS = {
    "interactions": INTERACTION_FIELDS,
    "consent": CONSENT_FIELDS,
    "eval-items": EVAL_ITEM_FIELDS,
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_the_readme_shows_the_contract_ingest_validates(kind: str) -> None:
    match = re.search(rf"<!-- contract:{kind} -->\n(.*?)\n<!-- /contract -->", README, re.S)
    assert match, f"README lacks the {kind} contract"
    assert match.group(1) == contract_markdown(kind), (  # type: ignore[arg-type]
        "regenerate it with core.log_contract.contract_markdown()"
    )


@pytest.mark.parametrize("kind", list(SPECS))
def test_the_contract_lists_every_field_required_first(kind: str) -> None:
    fields = contract(kind)  # type: ignore[arg-type]
    assert {f.name for f in fields} == {s.name for s in SPECS[kind]}
    required = [f.required for f in fields]
    assert required == sorted(required, reverse=True)
    assert all(f.meaning for f in fields)


def test_the_readme_example_is_the_sample_files_first_line() -> None:
    match = re.search(r"<!-- example:interactions -->\n```json\n(.*?)\n```", README, re.S)
    assert match and match.group(1) == example_line("interactions")


@pytest.mark.parametrize("kind", list(SAMPLE_FILES))
def test_each_sample_file_loads_whole_and_uses_every_column(store: Store, kind: str) -> None:
    path: Path = SAMPLE_FILES[kind]  # type: ignore[index]
    columns: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        columns |= set(json.loads(line))
    assert columns == {s.name for s in SPECS[kind]}
    result = ingest_file(store, path, user=local_operator(), kind=kind)  # type: ignore[arg-type]
    assert result.rows_read > 0
    assert result.accepted == result.rows_read and result.rejected == 0
    assert load_outcome(result)[0] == "success"


def test_a_load_that_accepts_nothing_is_a_warning(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no id"}\n{"interaction_id": "x"}\n', encoding="utf-8")
    result = ingest_file(store, bad, user=local_operator())
    assert result.accepted == 0 and result.rejected == 2
    outcome, message = load_outcome(result)
    assert outcome == "warning"
    assert message.startswith("Nothing was loaded from bad.jsonl")


def test_a_load_with_some_rows_refused_is_a_warning(store: Store, tmp_path: Path) -> None:
    good = SAMPLE_FILES["interactions"].read_text(encoding="utf-8").splitlines()[0]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(good + '\n{"interaction_id": "x"}\n', encoding="utf-8")
    result = ingest_file(store, mixed, user=local_operator())
    assert (result.accepted, result.rejected) == (1, 1)
    assert load_outcome(result)[0] == "warning"
    again = ingest_file(store, mixed, user=local_operator())
    assert load_outcome(again)[0] == "info"
