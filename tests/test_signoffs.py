"""Roles, permissions and sign-offs: who may edit, approve and override, enforced in core."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.access import AccessError, User, local_operator, require, user_from_identity
from core.errors import FlywheelError, PlanError
from core.plan_versions import list_versions, save_plan_version
from core.signoffs import approval_status, privacy_approved, record_decision, required_roles
from core.starters import starter_plan
from core.store import Store

PM = User("Maya", frozenset({"pm"}))
PRIVACY = User("Priya", frozenset({"privacy_reviewer"}))
ML = User("Omar", frozenset({"ml_lead"}))
VIEWER = User("Val", frozenset({"viewer"}))


@pytest.fixture
def plan_id(store: Store) -> str:
    pid, _ = save_plan_version(
        store, starter_plan("python_coding_assistant"), note="v1", user=local_operator()
    )
    return pid


def test_viewer_cannot_save_and_nothing_is_stored(store: Store, plan_id: str) -> None:
    with pytest.raises(AccessError, match="may not edit plans"):
        save_plan_version(
            store,
            starter_plan("python_coding_assistant"),
            note="n",
            plan_id=plan_id,
            user=VIEWER,
        )
    assert len(list_versions(store, plan_id)) == 1


def test_pm_edit_is_recorded_under_their_name(store: Store, plan_id: str) -> None:
    save_plan_version(
        store,
        starter_plan("python_coding_assistant"),
        note="n",
        plan_id=plan_id,
        user=PM,
    )
    assert list_versions(store, plan_id)[0].author == "Maya"


def test_only_an_ml_lead_overrides_a_gate() -> None:
    require(ML, "gate.override")
    for user in (PM, PRIVACY, VIEWER):
        with pytest.raises(AccessError):
            require(user, "gate.override")


def test_local_operator_holds_every_working_role() -> None:
    operator = local_operator()
    assert not operator.authenticated
    assert {"pm", "privacy_reviewer", "ml_lead"} <= operator.roles


def test_roles_file_maps_emails_to_roles(tmp_path: Path) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text(
        "default_role: viewer\nusers:\n  Priya@Example.com: [privacy_reviewer]\n"
        "  omar@example.com: ml_lead\n"
    )
    assert user_from_identity("priya@example.com", path=roles).roles == {"privacy_reviewer"}
    assert user_from_identity("omar@example.com", path=roles).roles == {"ml_lead"}
    assert user_from_identity("someone@example.com", path=roles).roles == {"viewer"}


def test_roles_file_with_an_unknown_role_is_refused(tmp_path: Path) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("users:\n  a@b.c: [superuser]\n")
    with pytest.raises(FlywheelError, match="superuser"):
        user_from_identity("a@b.c", path=roles)


def test_version_is_approved_only_when_every_required_role_approved(
    store: Store, plan_id: str
) -> None:
    assert required_roles(starter_plan("python_coding_assistant")) == [
        "pm",
        "privacy_reviewer",
        "ml_lead",
    ]
    record_decision(store, plan_id, 1, role="pm", user=PM, decision="approve")
    record_decision(store, plan_id, 1, role="privacy_reviewer", user=PRIVACY, decision="approve")
    status = approval_status(store, plan_id, 1)
    assert not status.approved and status.missing == ["ml_lead"]
    assert privacy_approved(store, plan_id, 1)
    status = record_decision(store, plan_id, 1, role="ml_lead", user=ML, decision="approve")
    assert status.approved


def test_an_edit_after_approval_needs_approval_again(store: Store, plan_id: str) -> None:
    for role, user in (("pm", PM), ("privacy_reviewer", PRIVACY), ("ml_lead", ML)):
        record_decision(store, plan_id, 1, role=role, user=user, decision="approve")  # type: ignore[arg-type]
    edited = starter_plan("python_coding_assistant")
    edited.cadence.validation_share = 0.15
    _, version = save_plan_version(
        store, edited, note="edit", user=local_operator(), plan_id=plan_id
    )
    assert approval_status(store, plan_id, 1).approved
    assert not approval_status(store, plan_id, version).approved
    assert not privacy_approved(store, plan_id, version)


def test_only_a_privacy_reviewer_approves_privacy(store: Store, plan_id: str) -> None:
    with pytest.raises(AccessError, match="privacy_reviewer"):
        record_decision(store, plan_id, 1, role="privacy_reviewer", user=ML, decision="approve")
    with pytest.raises(AccessError):
        record_decision(store, plan_id, 1, role="pm", user=VIEWER, decision="approve")


def test_rejection_needs_a_reason_and_is_audited(store: Store, plan_id: str) -> None:
    with pytest.raises(PlanError, match="why"):
        record_decision(store, plan_id, 1, role="privacy_reviewer", user=PRIVACY, decision="reject")
    status = record_decision(
        store,
        plan_id,
        1,
        role="privacy_reviewer",
        user=PRIVACY,
        decision="reject",
        note="Prompts kept too long",
    )
    assert status.rejected == ["privacy_reviewer"] and not status.approved
    audit = store.fetch_all("SELECT actor, action FROM audit_log WHERE action LIKE 'plan.re%'")
    assert audit == [("Priya", "plan.reject")]


def test_a_version_with_lint_errors_cannot_be_approved(store: Store) -> None:
    draft = starter_plan("python_coding_assistant")
    draft.gates = [g for g in draft.gates if g.comparator != "no_regression"]
    pid, _ = save_plan_version(store, draft, note="draft", user=local_operator())
    with pytest.raises(PlanError, match="lint errors"):
        record_decision(store, pid, 1, role="pm", user=PM, decision="approve")


def test_gate_override_needs_the_ml_lead_role(demo_store: Store) -> None:
    from core.gates import check_gates, record_decision

    plan_id, cycle = "python-coding-assistant", 2  # the demo's cycle 2 fails a slice gate
    assert check_gates(demo_store, plan_id, cycle).verdict == "fail"
    reason = "Slice regression is a known labelling issue, fixed next cycle."
    with pytest.raises(AccessError, match="may not override gates"):
        record_decision(demo_store, plan_id, cycle, decision="overridden", reason=reason, user=PM)
    decision_id = record_decision(
        demo_store, plan_id, cycle, decision="overridden", reason=reason, user=ML
    )
    row = demo_store.fetch_one(
        "SELECT actor FROM audit_log WHERE action = 'gate.overridden'"
        " ORDER BY audit_id DESC LIMIT 1"
    )
    assert decision_id and row == ("Omar",)


def test_data_permissions_are_enforced_in_core(demo_store: Store) -> None:
    from core.consent import forget_user
    from core.ingest import batch_rejects, ingest_bytes

    line = (
        b'{"interaction_id": "p1", "ts": "2027-01-02T00:00:00Z", "user_id": "u-perm", '
        b'"variant": "control", "model": "gpt-4o", "prompt": "hi", "response": "hello"}\n'
    )
    with pytest.raises(AccessError, match="may not ingest data"):
        ingest_bytes(demo_store, line, "perm.jsonl", user=VIEWER)
    assert ingest_bytes(demo_store, line, "perm.jsonl", user=PM).accepted == 1
    with pytest.raises(AccessError, match="may not erase users"):
        forget_user(demo_store, "u-perm", by=PM)
    assert forget_user(demo_store, "u-perm", by=PRIVACY).interactions_deleted == 1
    batch = demo_store.fetch_one("SELECT batch_id FROM quarantine LIMIT 1")
    assert batch is not None
    assert batch_rejects(demo_store, batch[0], user=ML)  # redacted reasons: anyone may read
    with pytest.raises(AccessError, match="may not view raw PII"):
        batch_rejects(demo_store, batch[0], reveal_raw=True, user=ML)
    assert batch_rejects(demo_store, batch[0], reveal_raw=True, user=PRIVACY)
