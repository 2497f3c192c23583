"""The A/B analysis of stored interactions, checked against scipy/statsmodels on the same
per-user data; the decision on constructed tests; the design calculator; chart, page, CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from cli_helpers import run_cli
from conftest import ROOT
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest
from streamlit.testing.v1 import AppTest

from core.abtest import ab_window, analyse_cycle, design_ab_test, plan_design, resolve_metric
from core.access import local_operator
from core.charts import ab_lift_figure
from core.demo import load_demo
from core.errors import AnalysisError
from core.ingest import ingest_file
from core.lint import ab_requirement
from core.plan import Plan, plan_timeline
from core.plan_versions import save_plan_version
from core.starters import starter_plan
from core.store import Store

# -- constructed tests -------------------------------------------------------------------------


def demo_plan(**ab: Any) -> Plan:
    plan = starter_plan("python_coding_assistant")
    for key, value in ab.items():
        setattr(plan.ab_test, key, value)
    return plan


def write_test(
    store: Store,
    plan: Plan,
    tmp_path: Path,
    *,
    users: int = 2000,
    treatment_share: float = 0.5,
    accept: tuple[float, float] = (0.3, 0.3),
    latency: tuple[float, float] = (1000.0, 1000.0),
    latency_sigma: tuple[float, float] = (0.3, 0.3),
    preperiod: bool = False,
    seed: int = 1,
    cycle: int = 1,
    system: dict[str, str] | None = None,
) -> str:
    """Store the plan and a seeded A/B test of ``users`` users in the cycle's window (each
    arm's interactions logging ``system[arm]`` as their system text, when given)."""
    plan_id, _ = save_plan_version(store, plan, note="test", user=local_operator())
    rng = np.random.default_rng(seed)
    first, last = ab_window(plan, cycle)
    start = datetime.combine(first, time(6), UTC)
    days = (last - first).days + 1
    lines = []
    for u in range(users):
        arm = "treatment" if rng.random() < treatment_share else "control"
        t = arm == "treatment"
        propensity = min(0.95, rng.beta(2, 4) / (2 / 6) * accept[t])
        visits = 1 + rng.poisson(0.8)
        day = int(rng.integers(0, days))
        rows = [
            (arm, start + timedelta(days=min(days - 1, day + k), minutes=int(rng.integers(600))))
            for k in range(visits)
        ]
        if preperiod and rng.random() < 0.6:
            rows += [
                ("control", start - timedelta(days=int(rng.integers(1, 8)))) for _ in range(visits)
            ]
        for n, (variant, moment) in enumerate(rows):
            lines.append(
                json.dumps(
                    {
                        "interaction_id": f"t{seed}-{cycle}-{u}-{n}",
                        "ts": moment.isoformat(),
                        "user_id": f"u{u}",
                        "variant": variant,
                        "model": variant,
                        "prompt": "q",
                        "response": "a",
                        "feedback": ["up", "down", None][int(rng.choice(3, p=[0.2, 0.1, 0.7]))],
                        "accepted": bool(rng.random() < propensity),
                        "latency_ms": int(
                            rng.lognormal(
                                np.log(latency[variant == "treatment"]),
                                latency_sigma[variant == "treatment"],
                            )
                        ),
                        "cost_usd": float(rng.uniform(0.001, 0.003)),
                        **({"system": system[variant]} if system and variant in system else {}),
                    }
                )
            )
    path = tmp_path / f"ab{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ingest_file(store, path, kind="interactions", cycle=cycle, user=local_operator())
    return plan_id


def raw_rows(store: Store, plan: Plan, cycle: int = 1) -> pd.DataFrame:
    """The test's interactions as stored, read here for the peers to work on."""
    first, last = ab_window(plan, cycle)
    with store.connect() as con:
        raw = con.execute(
            "SELECT user_id, variant, accepted, feedback, latency_ms, cost_usd FROM interactions "
            "WHERE cycle = ? AND ts >= ? AND ts < ?",
            [
                cycle,
                datetime.combine(first, time(0), UTC),
                datetime.combine(last + timedelta(days=1), time(0), UTC),
            ],
        ).df()
    raw["y"] = raw["accepted"].astype(float)
    raw["down"] = (raw["feedback"] == "down").astype(float)
    return raw


def per_user(store: Store, plan: Plan, cycle: int = 1) -> pd.DataFrame:
    """The test's users with their sums, computed here in pandas from the raw rows."""
    raw = raw_rows(store, plan, cycle)
    return (
        raw.groupby(["variant", "user_id"])
        .agg(y=("y", "sum"), m=("y", "size"), down=("down", "sum"), latency=("latency_ms", "sum"))
        .reset_index()
    )


def test_a_clear_win_ships(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=3000, accept=(0.3, 0.42))
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    assert result.decision.verdict == "ship"
    assert result.primary.always_valid and result.primary.ci is not None
    assert result.primary.ci[0] > 0
    assert any("significant improvement" in r for r in result.decision.reasons)


def test_the_analysis_shows_the_system_message_the_student_arm_logged(
    store: Store, tmp_path: Path
) -> None:
    plan = demo_plan()  # its student system message: "You are a Python expert."
    served = {"control": "You are a helpful assistant.", "treatment": "You are a Python expert."}
    plan_id = write_test(store, plan, tmp_path, users=400, system=served)
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None and result.student_system is not None
    treatment = next(a for a in result.arms if a.arm == "treatment")
    assert result.student_system.hashes == (("6193d3b3204c", treatment.interactions),)
    assert result.student_system.matches_plan
    assert result.to_dict()["student_system"]["plan_hash"] == "6193d3b3204c"
    assert not [w for w in result.warnings if "skew" in w]


def test_a_student_arm_served_under_another_system_message_is_a_skew_warning(
    store: Store, tmp_path: Path
) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=400, system={"treatment": "Be brief."})
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None and result.student_system is not None
    assert not result.student_system.matches_plan
    (skew,) = [w for w in result.warnings if w.startswith("Train/serve skew")]
    assert "not the plan's student system message (6193d3b3204c)" in skew


def test_no_system_summary_where_the_logs_carry_none(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=200)
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None and result.student_system is None
    assert result.to_dict()["student_system"] is None


def test_a_guardrail_breach_rolls_back_even_when_the_primary_wins(
    store: Store, tmp_path: Path
) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, accept=(0.3, 0.42), latency=(1000, 1400))
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None and result.decision.verdict == "roll_back"
    latency = next(g for g in result.guardrails if g.metric == "latency_p95_ms")
    assert latency.breached and latency.bound is not None and latency.bound > 0.1
    assert "latency_p95_ms" in result.decision.reasons[0]


def test_an_increase_within_the_tolerance_is_no_breach(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()  # latency tolerance +10%
    plan_id = write_test(store, plan, tmp_path, users=3000, latency=(1000, 1040))
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    latency = next(g for g in result.guardrails if g.metric == "latency_p95_ms")
    assert latency.lift is not None and latency.lift > 0.0
    assert not latency.breached


def test_a_p95_guardrail_is_tested_on_the_p95_not_the_mean(store: Store, tmp_path: Path) -> None:
    """The treatment's median is lower and its tail much longer: the mean moves ~3% (inside
    the +10% tolerance), the p95 ~45%. The guardrail reads the p95 and is breached."""
    plan = demo_plan()
    plan_id = write_test(
        store, plan, tmp_path, users=3000, latency=(1000, 900), latency_sigma=(0.3, 0.6)
    )
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    latency = next(g for g in result.guardrails if g.metric == "latency_p95_ms")
    rows = raw_rows(store, plan)
    clean = rows.groupby("user_id").filter(lambda g: g["variant"].nunique() == 1)
    p95 = clean.groupby("variant")["latency_ms"].quantile(0.95)
    mean = clean.groupby("variant")["latency_ms"].mean()
    assert mean["treatment"] / mean["control"] - 1 < 0.1  # the mean alone would pass
    assert latency.lift == pytest.approx(p95["treatment"] / p95["control"] - 1, rel=1e-9)
    assert "Price–Bonett" in latency.tested_as
    assert latency.breached and latency.bound is not None and latency.bound > 0.1
    assert result.decision.verdict == "roll_back"


def test_a_sample_ratio_mismatch_invalidates_the_test(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, treatment_share=0.42, accept=(0.3, 0.42))
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    assert result.srm.mismatch and result.decision.verdict == "invalid_srm"


def test_an_early_undecided_test_keeps_running_with_days_left(store: Store, tmp_path: Path) -> None:
    plan = demo_plan(daily_traffic=500)
    plan_id = write_test(store, plan, tmp_path, users=300)
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None and result.decision.verdict == "keep_running"
    assert result.decision.days_remaining is not None and result.decision.days_remaining > 0


def test_a_fixed_horizon_design_is_not_read_before_the_planned_sample(
    store: Store, tmp_path: Path
) -> None:
    plan = demo_plan(sequential=False)
    plan_id = write_test(store, plan, tmp_path, users=3000, accept=(0.3, 0.42))
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    assert result.primary_fixed.significant  # significant, yet only 1.5k of 14.9k per arm
    assert result.decision.verdict == "keep_running"
    assert "fixed-horizon" in result.decision.reasons[0]


def test_a_cycle_without_ab_data_gives_none(store: Store) -> None:
    plan = demo_plan()
    save_plan_version(store, plan, note="t", user=local_operator())
    assert analyse_cycle(store, plan, 2) is None


def test_bad_designs_and_metrics_raise_analysis_errors(store: Store) -> None:
    with pytest.raises(AnalysisError, match="cycle 99"):
        ab_window(demo_plan(), 99)
    with pytest.raises(AnalysisError, match="revenue"):
        resolve_metric("revenue")
    with pytest.raises(AnalysisError, match="Cannot size"):
        design_ab_test(
            0.9,
            0.5,
            relative=False,
            alpha=0.05,
            power=0.8,
            daily_traffic=10,
            traffic_shares=[0.5, 0.5],
        )


# -- the analysis against peers on the same per-user data ---------------------------------------


def test_analysis_matches_scipy_and_statsmodels(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=1500, accept=(0.3, 0.36), preperiod=True)
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    users = per_user(store, plan)
    arms = {a.arm: a for a in result.arms}
    counts = users.groupby("variant").size()
    assert {k: v.users for k, v in arms.items()} == counts.to_dict()

    # SRM: Pearson's chi-square on the users per arm.
    chi = sps.chisquare([counts["control"], counts["treatment"]])
    assert result.srm.p_value == pytest.approx(chi.pvalue, rel=1e-9)

    # Ratio metric by the delta method = the mean with user-clustered errors (statsmodels),
    # up to the n/(n−1) of the sample variance.
    raw = raw_rows(store, plan)
    variances = {}
    for variant, rows in raw.groupby("variant"):
        fit = sm.OLS(rows["y"].to_numpy(), np.ones(len(rows))).fit(
            cov_type="cluster",
            cov_kwds={"groups": pd.factorize(rows["user_id"])[0], "use_correction": False},
        )
        n = rows["user_id"].nunique()
        variances[variant] = (float(fit.params[0]), float(fit.cov_params()[0, 0]) * n / (n - 1))
    (mu_a, var_a), (mu_b, var_b) = variances["control"], variances["treatment"]
    primary = result.primary_fixed
    assert arms["control"].acceptance_rate == pytest.approx(mu_a, rel=1e-9)
    assert primary.estimate == pytest.approx(mu_b / mu_a - 1, rel=1e-9)
    expected_se = np.sqrt(var_b / mu_a**2 + var_a * mu_b**2 / mu_a**4)
    assert primary.se == pytest.approx(expected_se, rel=1e-9)
    assert primary.df is not None
    assert primary.p_value == pytest.approx(
        2 * sps.t.sf(abs(primary.estimate / expected_se), primary.df), rel=1e-9
    )

    # Latency quantiles: linear interpolation, as numpy.
    with store.connect() as con:
        lat = con.execute(
            "SELECT variant, latency_ms FROM interactions WHERE cycle = 1 AND ts >= ?",
            [datetime.combine(ab_window(plan, 1)[0], time(0), UTC)],
        ).df()
    for variant, group in lat.groupby("variant"):
        assert arms[variant].latency_p95_ms == pytest.approx(np.percentile(group.latency_ms, 95))

    # Holm across the secondary metrics, as statsmodels.
    secondary = [m for m in result.metrics if m.role == "secondary" and m.p_value is not None]
    adjusted = multipletests([m.p_value for m in secondary], method="holm")[1]
    assert [m.adjusted_p for m in secondary] == pytest.approx(list(adjusted), rel=1e-9)

    # The lift over time ends at the overall lift.
    assert result.lift_over_time[-1].lift == pytest.approx(primary.estimate, rel=1e-12)
    assert result.lift_over_time[-1].cs == pytest.approx(result.primary_sequential.ci)

    # CUPED's θ is the pooled regression slope of in-test on pre-period accepted counts.
    assert result.cuped is not None and result.cuped.users_with_preperiod > 0
    first = ab_window(plan, 1)[0]
    with store.connect() as con:
        pre = con.execute(
            "SELECT user_id, sum(CASE WHEN accepted THEN 1 ELSE 0 END) AS x FROM interactions "
            "WHERE ts >= ? AND ts < ? GROUP BY user_id",
            [
                datetime.combine(first - timedelta(days=14), time(0), UTC),
                datetime.combine(first, time(0), UTC),
            ],
        ).df()
    joined = users.merge(pre, on="user_id", how="left").fillna({"x": 0})
    slope = np.cov(joined["x"], joined["y"], ddof=1)[0, 1] / np.var(joined["x"], ddof=1)
    assert result.cuped.theta == pytest.approx(slope, rel=1e-9)


def test_users_seen_in_both_arms_are_left_out(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=200)
    first = ab_window(plan, 1)[0]
    crossing = tmp_path / "cross.jsonl"
    crossing.write_text(
        json.dumps(
            {
                "interaction_id": "x1",
                "ts": f"{first}T10:00:00Z",
                "user_id": "u0",
                "variant": "treatment",
                "model": "m",
                "prompt": "q",
                "response": "a",
            }
        )
        + "\n"
        + json.dumps(
            {
                "interaction_id": "x2",
                "ts": f"{first}T11:00:00Z",
                "user_id": "u0",
                "variant": "control",
                "model": "m",
                "prompt": "q",
                "response": "a",
            }
        )
        + "\n"
    )
    ingest_file(store, crossing, cycle=1, user=local_operator())
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None and result.excluded_users == 1
    assert sum(a.users for a in result.arms) == 199
    assert "both arms" in result.warnings[0]


def test_lift_over_time_is_the_lift_of_the_rows_up_to_each_day(
    store: Store, tmp_path: Path
) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=600, accept=(0.3, 0.4), seed=3)
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    with store.connect() as con:
        dated = con.execute(
            "SELECT user_id, variant, accepted, CAST(timezone('UTC', ts) AS DATE) AS day"
            " FROM interactions WHERE cycle = 1"
        ).df()
    assert len(result.lift_over_time) == dated["day"].nunique()
    for point in result.lift_over_time:
        upto = dated[dated["day"] <= pd.Timestamp(point.day)]
        rate = upto.groupby("variant")["accepted"].mean()
        users = upto.groupby("variant")["user_id"].nunique()
        assert (point.users_control, point.users_treatment) == (
            users.get("control", 0),
            users.get("treatment", 0),
        )
        if point.lift is not None:
            assert point.lift == pytest.approx(rate["treatment"] / rate["control"] - 1, rel=1e-9)


def test_several_cycles_at_a_glance_are_the_full_analyses(store: Store, tmp_path: Path) -> None:
    from core.abtest import analyse_cycles

    plan = demo_plan()
    write_test(store, plan, tmp_path, users=400, accept=(0.3, 0.4), seed=4, cycle=1)
    plan_id = write_test(store, plan, tmp_path, users=300, treatment_share=0.4, seed=5, cycle=2)
    glance = analyse_cycles(store, plan, [1, 2, 3], plan_id=plan_id)
    assert sorted(glance) == [1, 2]  # cycle 3 has no data
    for cycle, light in glance.items():
        full = analyse_cycle(store, plan, cycle, plan_id=plan_id)
        assert full is not None and not isinstance(light, AnalysisError)
        assert light.primary == full.primary
        assert light.decision == full.decision
        assert light.srm == full.srm
        # Sums of latencies and costs may differ in their last bits between two passes.
        for a, b in zip(light.metrics, full.metrics, strict=True):
            assert (a.metric, a.significant) == (b.metric, b.significant)
            assert (a.lift, *(a.ci or ()), a.adjusted_p) == pytest.approx(
                (b.lift, *(b.ci or ()), b.adjusted_p)
            )
        for g, h in zip(light.guardrails, full.guardrails, strict=True):
            assert (g.metric, g.breached) == (h.metric, h.breached)
            assert (g.lift, g.bound, g.p_value) == pytest.approx((h.lift, h.bound, h.p_value))
        assert [(a.arm, a.users, a.acceptance_rate) for a in light.arms] == [
            (a.arm, a.users, a.acceptance_rate) for a in full.arms
        ]
        assert light.observed_daily_users == full.observed_daily_users
        assert (light.cuped, light.lift_over_time) == (None, ())


# -- design --------------------------------------------------------------------------------------


def test_the_design_calculator_is_the_lint_sizing() -> None:
    plan = demo_plan()
    design = plan_design(plan)
    assert (design.n_per_arm, design.days) == ab_requirement(plan)
    assert design.total == 2 * design.n_per_arm
    assert design.days_available == min(c.ab_days for c in plan_timeline(plan))
    assert design.fits is True
    reference = design_ab_test(
        0.10,
        0.01,
        relative=False,
        alpha=0.05,
        power=0.8,
        daily_traffic=1000,
        traffic_shares=[0.5, 0.5],
        mde_days=30,
    )
    assert reference.n_per_arm == 14749  # statsmodels / STATS.md reference
    assert reference.days == 30  # 14749 users at 500 a day per arm
    assert reference.mde_in_days is not None and reference.mde_in_days <= 0.01


# -- chart ---------------------------------------------------------------------------------------


def test_lift_chart_fits_the_estimate_and_the_latest_interval(store: Store, tmp_path: Path) -> None:
    plan = demo_plan()
    plan_id = write_test(store, plan, tmp_path, users=800)
    result = analyse_cycle(store, plan, 1, plan_id=plan_id)
    assert result is not None
    # The days that have an estimate, a confidence sequence and an interval.
    points = [
        (p.day, p.lift, p.cs, p.ci)
        for p in result.lift_over_time
        if p.lift is not None and p.cs and p.ci
    ]
    fig = ab_lift_figure(result.lift_over_time, metric="acceptance_rate", planned_total=29706)
    band, low, _high, lift, cut = fig.data
    y_low, y_high = fig.layout.yaxis.range
    _, _, latest_cs, latest_ci = points[-1]
    # The axis holds every estimate and the latest day's intervals ...
    lifts = [estimate for _, estimate, _, _ in points]
    assert y_low <= min(lifts) and y_high >= max(lifts)
    assert y_low <= min(*latest_cs, *latest_ci) and y_high >= max(*latest_cs, *latest_ci)
    # ... and the first day's wider sequence is cut at its edge, with a marker there.
    first_day, _, first_cs, _ = points[0]
    assert first_cs[1] > y_high or first_cs[0] < y_low
    assert band.fill == "toself" and len(band.x) == 2 * len(points)
    assert list(band.y[: len(points)]) == [min(y_high, max(y_low, cs[1])) for _, _, cs, _ in points]
    assert list(lift.y) == lifts
    assert list(low.y) == [min(y_high, max(y_low, ci[0])) for _, _, _, ci in points]
    assert first_day.isoformat() in list(cut.x) and cut.name == "interval runs off the chart"
    assert set(cut.y) <= {y_low, y_high}
    assert "29,706" in fig.layout.title.text


# -- demo, page and CLI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("abdemo") / "flywheel.duckdb"
    load_demo(Store(path))
    return path


@pytest.fixture
def demo_db(demo_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("FLYWHEEL_DB", str(demo_path))
    monkeypatch.setenv("FLYWHEEL_AUTO_DEMO", "0")
    yield Store(demo_path)


def test_demo_cycles_ship_roll_back_and_mismatch(demo_db: Store) -> None:
    plan = starter_plan("python_coding_assistant")
    verdicts = {}
    for cycle in (1, 2, 3):
        result = analyse_cycle(demo_db, plan, cycle)
        assert result is not None and result.excluded_users == 0
        verdicts[cycle] = result.decision.verdict
    assert verdicts == {1: "ship", 2: "roll_back", 3: "invalid_srm"}


def open_abtest() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/abtest.py")
    at.run()
    return at


def test_page_on_an_empty_store_says_what_to_do(store: Store) -> None:
    at = open_abtest()
    assert not at.exception
    assert any("No plan yet" in i.value for i in at.info)


def test_page_on_a_cycle_without_data_shows_an_empty_state(store: Store) -> None:
    save_plan_version(store, demo_plan(), note="t", user=local_operator())
    at = open_abtest()
    assert not at.exception and not at.error
    assert any("no A/B data yet" in i.value for i in at.info)
    assert [m.value for m in at.metric][:2] == ["14,853", "8"]  # the design calculator


def test_page_shows_decision_srm_banner_and_guardrails_on_the_demo(demo_db: Store) -> None:
    at = open_abtest()
    assert not at.exception
    assert "Ship the treatment" in at.success[0].value
    assert len(at.get("plotly_chart")) == 1
    at.selectbox(key="ab_cycle").set_value(2).run()
    assert "Roll back" in at.error[0].value and "latency_p95_ms" in at.error[0].value
    at.selectbox(key="ab_cycle").set_value(3).run()
    assert "Sample ratio mismatch" in at.error[0].value
    at.selectbox(key="ab_cycle").set_value(5).run()
    assert any("no A/B data yet" in i.value for i in at.info)


def test_a_broken_split_hides_the_lift_behind_the_warning(store: Store, tmp_path: Path) -> None:
    write_test(store, demo_plan(), tmp_path, treatment_share=0.42, accept=(0.3, 0.42))
    at = open_abtest()
    assert not at.exception, at.exception
    assert "Sample ratio mismatch" in at.error[0].value
    hidden = at.expander[0]
    assert "not trustworthy" in hidden.label
    # The lift, its chart and the tables with "significant" sit only inside the expander.
    assert [m.label for m in at.metric if m.label == "Relative lift"] == ["Relative lift"]
    assert [m.label for m in hidden.metric if m.label == "Relative lift"] == ["Relative lift"]
    assert len(hidden.get("plotly_chart")) == len(at.get("plotly_chart")) == 1
    assert len(hidden.dataframe) == len(at.dataframe) - 1  # all but the arms
    shown = " ".join(c.value for c in at.caption) + " ".join(e.value for e in at.error)
    assert not re.search(r"\d[eE]-\d|p = 0(?![.\d])", shown), shown


def test_p_values_below_1e_4_print_as_less_than(store: Store, tmp_path: Path) -> None:
    write_test(store, demo_plan(), tmp_path, users=4000, accept=(0.3, 0.6))
    at = open_abtest()
    assert not at.exception, at.exception
    texts = [c.value for c in at.caption]
    assert any("Fixed-horizon p = < 0.0001" in t for t in texts), texts


def test_cli_stats_ab_matches_statsmodels(store: Store) -> None:
    done = run_cli(
        "ab",
        "compare",
        "--control-n",
        "10000",
        "--control-x",
        "1000",
        "--treatment-n",
        "10000",
        "--treatment-x",
        "1100",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    _z, p = proportions_ztest([1100, 1000], [10000, 10000])
    assert out["p_value"] == pytest.approx(p, rel=1e-6)
    assert out["abs_diff"] == pytest.approx(0.01)
    assert out["rel_lift"] == pytest.approx(0.1)
    assert out["ci_rel"] == pytest.approx([0.0108647, 0.1891353], rel=1e-5)
    seq = json.loads(
        run_cli(
            "ab",
            "compare",
            "--control-n",
            "3000",
            "--control-x",
            "1396",
            "--treatment-n",
            "3461",
            "--treatment-x",
            "2422",
            "--sequential",
            "--n-star",
            "5000",
            "--json",
        ).stdout
    )
    assert seq["ci_rel"] == pytest.approx([0.40098, 0.60675], rel=1e-4)  # gbstats reference


def test_cli_stats_srm_and_sample_size(store: Store) -> None:
    done = run_cli("stats", "srm", "--counts", "5000,5400", "--json")
    assert done.returncode == 1  # a mismatch is a failed check
    out = json.loads(done.stdout)
    assert out["mismatch"] is True
    assert out["p_value"] == pytest.approx(sps.chisquare([5000, 5400]).pvalue, rel=1e-9)
    fine = json.loads(run_cli("stats", "srm", "--counts", "5000,5200", "--json").stdout)
    assert fine["mismatch"] is False and fine["chi2"] == pytest.approx(
        sps.chisquare([5000, 5200]).statistic
    )
    size = run_cli("stats", "sample-size", "--baseline", "0.1", "--mde", "0.01", "--json")
    assert json.loads(size.stdout)["n_per_arm"] == 14749
    relative = run_cli(
        "stats", "sample-size", "--baseline", "0.1", "--mde", "0.1", "--relative", "--json"
    )
    assert json.loads(relative.stdout)["n_per_arm"] == 14749
    bad = run_cli("stats", "srm", "--counts", "5000,lots")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--counts" in bad.stderr
    impossible = run_cli(
        "ab",
        "compare",
        "--control-n",
        "10",
        "--control-x",
        "11",
        "--treatment-n",
        "10",
        "--treatment-x",
        "1",
    )
    assert impossible.returncode == 2 and "between 0 and n" in impossible.stderr


def test_cli_ab_report(demo_db: Store) -> None:
    done = run_cli("ab", "report", "--cycle", "1", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {"arms", "srm_p", "lift", "ci", "p_value", "decision"} <= set(out)
    assert out["decision"] == "ship" and len(out["arms"]) == 2 and out["ci"][0] > 0
    rolled = run_cli("ab", "report", "--cycle", "2")
    assert rolled.returncode == 1 and "Decision: Roll back the treatment." in rolled.stdout
    empty = run_cli("ab", "report", "--cycle", "5")
    assert empty.returncode == 2 and "ingest FILE --cycle 5" in empty.stderr
