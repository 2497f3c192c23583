"""Saving plans as versions, history, diffs and the demo workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.access import User, local_operator
from core.demo import is_demo_workspace, load_demo
from core.errors import PlanError
from core.lint import lint_plan
from core.plan_versions import diff_plans, list_plans, list_versions, load_plan, save_plan_version
from core.starters import starter_plan
from core.store import Store


def test_saving_twice_makes_two_versions_and_keeps_both(store: Store) -> None:
    plan = starter_plan("python_coding_assistant")
    plan_id, v1 = save_plan_version(store, plan, note="first", user=local_operator())
    plan.cadence.validation_share = 0.2
    same_id, v2 = save_plan_version(
        store, plan, note="bigger holdout", user=local_operator(), plan_id=plan_id
    )
    assert (same_id, v1, v2) == (plan_id, 1, 2)
    assert load_plan(store, plan_id, 1)[0].cadence.validation_share == 0.1
    assert load_plan(store, plan_id)[0].cadence.validation_share == 0.2
    assert [v.note for v in list_versions(store, plan_id)] == ["bigger holdout", "first"]


def test_plan_with_lint_errors_is_saved_as_a_draft_not_ready(store: Store) -> None:
    plan = starter_plan("python_coding_assistant")
    plan.goal.owner = ""
    plan_id, _ = save_plan_version(store, plan, note="draft", user=local_operator())
    (version,) = list_versions(store, plan_id)
    assert version.lint_errors == 1 and not version.ready
    assert not list_plans(store)[0].ready


def test_saving_is_audited(store: Store) -> None:
    plan_id, _ = save_plan_version(
        store,
        starter_plan("customer_support_assistant"),
        note="n",
        user=User("jonas", frozenset({"pm"})),
    )
    rows = store.fetch_all("SELECT actor, action, target FROM audit_log")
    assert rows == [("jonas", "plan.save", f"{plan_id}@v1")]


def test_two_plans_with_one_feature_get_distinct_ids(store: Store) -> None:
    first, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="a", user=local_operator()
    )
    second, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="b", user=local_operator()
    )
    assert first != second


def test_unknown_plan_or_version_is_a_plan_error(store: Store) -> None:
    with pytest.raises(PlanError, match="no plan 'nope'"):
        load_plan(store, "nope")
    plan_id, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="a", user=local_operator()
    )
    with pytest.raises(PlanError, match="version 9"):
        load_plan(store, plan_id, 9)
    with pytest.raises(PlanError):
        save_plan_version(
            store,
            starter_plan("python_coding_assistant"),
            note="a",
            user=local_operator(),
            plan_id="nope",
        )


def test_diff_names_each_changed_field() -> None:
    before = starter_plan("python_coding_assistant")
    after = before.model_copy(deep=True)
    after.gates[1].margin = 0.05
    after.generation.axes[0].values.append("numpy")
    after.consent.scopes = ["training"]
    changes = {c.path: (c.before, c.after) for c in diff_plans(before, after)}
    assert changes["gates[1].margin"] == (0.02, 0.05)
    assert changes["generation.axes[0].values"][1][-1] == "numpy"
    assert changes["consent.scopes"] == (["training", "human_review", "analytics"], ["training"])
    assert len(changes) == 3
    assert diff_plans(before, before) == []


def test_demo_is_deterministic_labelled_and_loaded_once(store: Store) -> None:
    first = load_demo(store)
    again = load_demo(store)
    assert first.created and not again.created
    assert first.plan_id == again.plan_id
    assert is_demo_workspace(store)
    assert [p.is_demo for p in list_plans(store)] == [True]
    versions = list_versions(store, first.plan_id)
    assert len(versions) == 3
    assert versions[-1].lint_errors > 0  # the first draft shows what lint catches
    assert versions[0].ready
    assert first.cycles == 6


def test_demo_with_same_seed_gives_same_plans(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    stores = [Store(base / "a.duckdb"), Store(base / "b.duckdb")]
    for s in stores:
        load_demo(s, seed=11)
    digests = [[v.sha256 for v in list_versions(s, "python-coding-assistant")] for s in stores]
    assert digests[0] == digests[1]


def test_credentials_in_plan_urls_are_never_stored_exported_or_rendered(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan file whose endpoints carry a password and keys is imported without them: the
    stored body, the audit log, the exported file and the rendered document hold none."""
    from core.cli import main
    from core.plan_files import dump_plan

    plan = starter_plan("python_coding_assistant")
    plan.generation.endpoint = "https://bob:hunter2-secret@teacher.example:8443/v1?api-version=7"
    plan.training.openai.endpoint = "https://ft.example/v1?api_key=sk-live-plan0123456789"
    plan.goal.business_goal += " Staging: https://stage.example/v1?token=tok-plan-0123456789."
    source = tmp_path / "plan.json"
    source.write_text(dump_plan(plan, "json"), encoding="utf-8")
    secrets = ("hunter2", "bob:", "sk-live-plan", "tok-plan")

    db = ["--db", str(store.path)]
    assert main(["plan", "lint", str(source)]) == 1
    assert "ENDPOINT_CREDENTIALS" in capsys.readouterr().out
    assert main(["plan", "import", str(source), *db]) == 0
    stored, _ = load_plan(store, list_plans(store)[0].plan_id)
    assert stored.generation.endpoint == "https://teacher.example:8443/v1?api-version=7"
    assert stored.training.openai.endpoint == "https://ft.example/v1"
    assert not [f for f in lint_plan(stored).findings if f.code == "ENDPOINT_CREDENTIALS"]
    exported, rendered = tmp_path / "out.yaml", tmp_path / "plan.md"
    assert main(["plan", "export", "--out", str(exported), *db]) == 0
    assert main(["plan", "render", "--format", "md", "--out", str(rendered), *db]) == 0
    bodies = " ".join(str(r) for r in store.fetch_all("SELECT body FROM plan_versions"))
    audit = " ".join(str(r) for r in store.fetch_all("SELECT * FROM audit_log"))
    assert "credentials_removed" in audit and "generation.endpoint" in audit
    texts = [bodies, audit, exported.read_text(), rendered.read_text(), capsys.readouterr().out]
    assert not [s for s in secrets for text in texts if s in text]


def test_the_cli_the_sidebar_and_exports_default_to_the_newest_plan_of_ones_own(
    demo_store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With the demo loaded and two plans of one's own, a command without --plan and the
    sidebar's first choice are the newest of one's own plans, never the demo's."""
    import json

    from conftest import ROOT
    from streamlit.testing.v1 import AppTest

    from core.cli import default_plan_id, main

    older, _ = save_plan_version(
        demo_store, starter_plan("customer_support_assistant"), note="a", user=local_operator()
    )
    newer, _ = save_plan_version(
        demo_store, starter_plan("python_coding_assistant"), note="b", user=local_operator()
    )
    demo = next(p.plan_id for p in list_plans(demo_store) if p.is_demo)
    assert len({older, newer, demo}) == 3
    assert default_plan_id(demo_store) == newer

    out = tmp_path / "plan.yaml"
    assert main(["plan", "export", "--db", str(demo_store.path), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan_id"] == newer

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    assert not at.exception, at.exception
    assert at.session_state["plan_id"] == newer


def test_with_only_the_demo_the_default_plan_is_the_demos(demo_store: Store) -> None:
    from core.cli import default_plan_id

    (demo,) = [p.plan_id for p in list_plans(demo_store) if p.is_demo]
    assert default_plan_id(demo_store) == demo
