"""Retention is pure domain logic: examples for the rules, properties for any history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import groupby

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.errors import ValidationFailed
from shared.domain.retention import BackupRef, RetentionPolicy, plan_retention

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def daily_history(days: int, per_day: int = 1) -> list[BackupRef]:
    return [
        BackupRef(f"d{d:03}-{n}", NOW - timedelta(days=d, hours=n)) for d in range(days) for n in range(per_day)
    ]


def kept_ids(backups, *policies) -> set[str]:
    return {d.backup.id for d in plan_retention(backups, policies, NOW) if d.keep}


def test_keep_last_keeps_the_newest_n() -> None:
    history = daily_history(10)
    assert kept_ids(history, RetentionPolicy(keep_last=3)) == {"d000-0", "d001-0", "d002-0"}


def test_max_age_deletes_older_backups() -> None:
    history = daily_history(10)
    assert kept_ids(history, RetentionPolicy(max_age_days=4)) == {f"d{d:03}-0" for d in range(5)}


def test_daily_rule_keeps_the_newest_backup_of_each_day() -> None:
    history = daily_history(5, per_day=3)  # hour 0 is the newest of each day
    assert kept_ids(history, RetentionPolicy(keep_daily=2, min_keep=1)) == {"d000-0", "d001-0"}


def test_age_rule_never_deletes_the_last_good_backups_while_new_runs_fail() -> None:
    """All backups are older than max_age because every recent run failed: min_keep saves them."""
    stale = [BackupRef(f"old{n}", NOW - timedelta(days=40 + n)) for n in range(5)]
    assert kept_ids(stale, RetentionPolicy(max_age_days=7)) == {"old0"}
    assert kept_ids(stale, RetentionPolicy(max_age_days=7, min_keep=3)) == {"old0", "old1", "old2"}


def test_a_policy_without_deleting_rules_deletes_nothing() -> None:
    history = daily_history(4)
    assert kept_ids(history, RetentionPolicy()) == {b.id for b in history}


def test_several_policies_keep_what_any_of_them_keeps() -> None:
    history = daily_history(30)
    both = kept_ids(history, RetentionPolicy(keep_last=2), RetentionPolicy(keep_monthly=2))
    assert both == kept_ids(history, RetentionPolicy(keep_last=2)) | kept_ids(history, RetentionPolicy(keep_monthly=2))


def test_decisions_say_why() -> None:
    decisions = plan_retention(daily_history(3), [RetentionPolicy(keep_last=1, keep_daily=2)], NOW)
    assert [d.reasons for d in decisions] == [("min_keep", "keep_last", "keep_daily"), ("keep_daily",), ()]


@pytest.mark.parametrize(
    ("data", "pointer"),
    [({"keep_last": -1}, "/retention/keep_last"), ({"min_keep": 0}, "/retention/min_keep"),
     ({"keep_forever": 1}, "/retention/keep_forever"), ({"keep_daily": "7"}, "/retention/keep_daily"),
     ({"keep_weekly": True}, "/retention/keep_weekly")],
)
def test_invalid_policies_point_at_the_field(data, pointer) -> None:
    with pytest.raises(ValidationFailed) as caught:
        RetentionPolicy.from_dict(data)
    assert [e["pointer"] for e in caught.value.errors] == [pointer]


# ------------------------------------------------------------------------------ properties

moments = st.integers(min_value=0, max_value=400 * 24 * 60).map(lambda m: NOW - timedelta(minutes=m))
histories = st.lists(moments, max_size=40).map(lambda times: [BackupRef(f"b{i:03}", t) for i, t in enumerate(times)])
counts = st.one_of(st.none(), st.integers(min_value=0, max_value=12))
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    max_age_days=st.one_of(st.none(), st.integers(min_value=0, max_value=500)),
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    min_keep=st.integers(min_value=1, max_value=5),
)


def spec_kept(backups: list[BackupRef], policy: RetentionPolicy) -> set[str]:
    """The policy's definition, written independently of the implementation (group, then slice)."""
    order = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    if not any(getattr(policy, r) is not None for r in ("keep_last", "max_age_days", "keep_daily", "keep_weekly", "keep_monthly")):
        return {b.id for b in order}
    kept = {b.id for b in order[: policy.min_keep]}
    kept |= {b.id for b in order[: policy.keep_last or 0]}
    if policy.max_age_days is not None:
        kept |= {b.id for b in order if NOW - b.created_at <= timedelta(days=policy.max_age_days)}
    periods = {
        "keep_daily": lambda t: t.date(),
        "keep_weekly": lambda t: t.isocalendar()[:2],
        "keep_monthly": lambda t: (t.year, t.month),
    }
    for rule, key in periods.items():
        count = getattr(policy, rule) or 0
        groups = [list(g) for _, g in groupby(order, key=lambda b: key(b.created_at))]
        kept |= {group[0].id for group in groups[:count]}
    return kept


@settings(max_examples=400, deadline=None)
@given(histories, policies)
def test_the_newest_min_keep_backups_always_survive(history, policy) -> None:
    newest = sorted(history, key=lambda b: (b.created_at, b.id), reverse=True)[: policy.min_keep]
    assert {b.id for b in newest} <= kept_ids(history, policy)


@settings(max_examples=400, deadline=None)
@given(histories, policies)
def test_the_kept_set_matches_the_policy_definition(history, policy) -> None:
    assert kept_ids(history, policy) == spec_kept(history, policy)


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_applying_a_policy_twice_deletes_nothing_more(history, policy) -> None:
    survivors = [b for b in history if b.id in kept_ids(history, policy)]
    assert kept_ids(survivors, policy) == {b.id for b in survivors}


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_every_decision_is_explained(history, policy) -> None:
    for decision in plan_retention(history, [policy], NOW):
        assert decision.keep == bool(decision.reasons)
