"""The Audit page through AppTest: every action family the log holds finds its entries."""

from __future__ import annotations

from conftest import ROOT
from streamlit.testing.v1 import AppTest

from core.audit import ACTION_FAMILIES, audit_actions, audit_entries
from core.store import Store


def test_each_family_choice_lists_every_entry_of_that_family(demo_store: Store) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/audit.py")
    at.run()
    assert not at.exception, at.exception
    recorded = audit_actions(demo_store)
    families = {a.split(".")[0] for a in recorded}
    assert {"ingest", "cycle_run", "plan"} <= families
    total = len(audit_entries(demo_store))
    assert any(c.value == f"{total:,} entries" for c in at.caption), "the default window hides"
    picker = at.selectbox[0]
    for family in sorted(families):
        assert family in ACTION_FAMILIES
        picker.set_value(family).run()
        expected = [e for e in audit_entries(demo_store) if e.action.split(".")[0] == family]
        assert expected
        shown = at.dataframe[0].value
        assert len(shown) == len(expected), family
        assert set(shown["action"]) == {e.action for e in expected}
