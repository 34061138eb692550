"""The rails that keep retention from deleting what it should not: partial backups, pins, and
policies that govern only their own schedule's backups. Pure logic: examples, then properties."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.errors import ValidationFailed
from shared.domain.retention import BackupRef, RetentionPolicy, ScopedPolicy, plan_retention
from tests.unit.test_retention import NOW, policies, spec_kept


def ref(name: str, days_old: float, **flags) -> BackupRef:
    return BackupRef(name, NOW - timedelta(days=days_old), **flags)


def decide(backups, *policies) -> dict[str, tuple[str, ...]]:
    """Backup id -> reasons it is kept (empty: deleted)."""
    return {d.backup.id: d.reasons for d in plan_retention(backups, policies, NOW)}


def kept(backups, *policies) -> set[str]:
    return {name for name, reasons in decide(backups, *policies).items() if reasons}


# ------------------------------------------------------------------------------ partial backups


def test_a_partial_backup_does_not_push_a_full_one_out_of_keep_last() -> None:
    history = [ref("one-table", 0, partial=True), ref("full-1", 1), ref("full-2", 2), ref("full-3", 3)]
    assert kept(history, RetentionPolicy(keep_last=2)) == {"one-table", "full-1", "full-2"}


def test_partial_backups_never_count_for_min_keep_or_the_periods() -> None:
    history = [ref("partial-today", 0, partial=True), ref("full-yesterday", 1), ref("full-old", 40)]
    reasons = decide(history, RetentionPolicy(keep_daily=1, max_age_days=7))
    assert reasons["full-yesterday"] == ("min_keep", "max_age_days", "keep_daily")
    assert reasons["partial-today"] == ("max_age_days",)
    assert reasons["full-old"] == ()


def test_only_max_age_deletes_a_partial_backup() -> None:
    old_partial = [ref("partial-old", 100, partial=True), ref("full", 0)]
    assert decide(old_partial, RetentionPolicy(keep_last=1))["partial-old"] == ("partial",)
    assert decide(old_partial, RetentionPolicy(keep_last=1, max_age_days=30))["partial-old"] == ()


# ------------------------------------------------------------------------------ pins


def test_a_pinned_backup_is_kept_and_still_counts_for_keep_last() -> None:
    history = [ref("new", 0), ref("pinned-middle", 1, pinned=True), ref("old", 2), ref("older", 3)]
    reasons = decide(history, RetentionPolicy(keep_last=2))
    assert reasons["pinned-middle"] == ("pinned", "keep_last")
    assert reasons["old"] == () and reasons["older"] == ()
    very_old = [ref("new", 0), ref("pinned-ancient", 900, pinned=True)]
    assert decide(very_old, RetentionPolicy(max_age_days=1))["pinned-ancient"] == ("pinned",)


# ------------------------------------------------------------------------------ which backups a policy governs


def test_a_schedule_policy_deletes_only_its_own_backups() -> None:
    history = [
        ref("a-new", 0, schedule_id="a"),
        ref("a-old", 2, schedule_id="a"),
        ref("b-old", 3, schedule_id="b"),
        ref("manual-old", 4),
    ]
    reasons = decide(history, ScopedPolicy(RetentionPolicy(keep_last=1), schedule_id="a"))
    assert reasons["a-old"] == ()
    assert reasons["b-old"] == ("no policy governs it",)
    assert reasons["manual-old"] == ("no policy governs it",)


def test_manual_backups_only_when_the_policy_includes_them() -> None:
    history = [ref("a-new", 0, schedule_id="a"), ref("manual-1", 1), ref("manual-2", 2)]
    policy = RetentionPolicy(keep_last=1, include_manual=True)
    assert kept(history, ScopedPolicy(policy, schedule_id="a")) == {"a-new"}
    assert kept(history, ScopedPolicy(RetentionPolicy(keep_last=1), schedule_id="a")) == {"a-new", "manual-1", "manual-2"}


def test_a_target_policy_governs_every_backup_of_the_target() -> None:
    history = [ref("a", 0, schedule_id="a"), ref("b", 1, schedule_id="b"), ref("manual", 2)]
    assert kept(history, ScopedPolicy(RetentionPolicy(keep_last=1))) == {"a"}
    assert kept(history, RetentionPolicy(keep_last=1)) == {"a"}  # a bare policy is target-wide


def test_a_schedule_policy_without_deleting_rules_keeps_all_it_governs_beside_another() -> None:
    history = [ref("a-1", 0, schedule_id="a"), ref("a-2", 1, schedule_id="a"), ref("b-1", 2, schedule_id="b"), ref("b-2", 3, schedule_id="b")]
    reasons = decide(
        history,
        ScopedPolicy(RetentionPolicy(min_keep=1), schedule_id="a"),
        ScopedPolicy(RetentionPolicy(keep_last=1), schedule_id="b"),
    )
    assert reasons["a-2"] == ("no deleting rule",)
    assert reasons["b-2"] == ()


@pytest.mark.parametrize("value", ["yes", 1, "true", None])
def test_include_manual_is_a_strict_boolean(value) -> None:
    with pytest.raises(ValidationFailed) as caught:
        RetentionPolicy.from_dict({"keep_last": 3, "include_manual": value})
    assert [e["pointer"] for e in caught.value.errors] == ["/retention/include_manual"]


def test_include_manual_is_kept_in_the_policy() -> None:
    policy = RetentionPolicy.from_dict({"keep_last": 3, "include_manual": True})
    assert policy.include_manual is True and policy.to_dict()["include_manual"] is True
    assert RetentionPolicy.from_dict({"keep_last": 3}).include_manual is False


# ------------------------------------------------------------------------------ properties

SCHEDULES = ("a", "b")
moments = st.integers(min_value=0, max_value=400 * 24 * 60).map(lambda m: NOW - timedelta(minutes=m))
flagged = st.tuples(moments, st.sampled_from((None, *SCHEDULES)), st.booleans(), st.booleans())
histories = st.lists(flagged, max_size=40).map(
    lambda rows: [
        BackupRef(f"b{i:03}", t, schedule_id=schedule, partial=partial, pinned=pinned)
        for i, (t, schedule, partial, pinned) in enumerate(rows)
    ]
)
with_manual = st.builds(lambda p, manual: RetentionPolicy(**{**p.to_dict(), "include_manual": manual}), policies, st.booleans())
scoped_policies = st.lists(
    st.builds(ScopedPolicy, with_manual, st.sampled_from((None, *SCHEDULES))), min_size=1, max_size=3
)


def deleted(history, scoped) -> list[BackupRef]:
    kept_ids = {d.backup.id for d in plan_retention(history, scoped, NOW) if d.keep}
    return [b for b in history if b.id not in kept_ids]


@settings(max_examples=400, deadline=None)
@given(histories, scoped_policies)
def test_a_pinned_backup_is_never_deleted(history, scoped) -> None:
    assert not [b for b in deleted(history, scoped) if b.pinned]


@settings(max_examples=400, deadline=None)
@given(histories, scoped_policies)
def test_only_a_policy_that_governs_a_backup_can_delete_it(history, scoped) -> None:
    for backup in deleted(history, scoped):
        assert any(p.governs(backup) for p in scoped)
        if backup.schedule_id is None:  # a manual backup: a target policy, or one that opted in
            assert any(p.schedule_id is None or p.policy.include_manual for p in scoped)


@settings(max_examples=400, deadline=None)
@given(histories, scoped_policies)
def test_a_partial_backup_is_deleted_only_for_its_age(history, scoped) -> None:
    for backup in deleted(history, scoped):
        if backup.partial:
            for policy in (p.policy for p in scoped if p.governs(backup)):
                assert policy.max_age_days is not None
                assert NOW - backup.created_at > timedelta(days=policy.max_age_days)


@settings(max_examples=400, deadline=None)
@given(histories, scoped_policies)
def test_partial_backups_change_nothing_for_the_full_ones(history, scoped) -> None:
    full = [b for b in history if not b.partial]
    assert {b.id for b in deleted(history, scoped) if not b.partial} == {b.id for b in deleted(full, scoped)}


@settings(max_examples=400, deadline=None)
@given(histories, with_manual, st.sampled_from(SCHEDULES))
def test_a_schedule_policy_keeps_its_full_backups_by_the_policy_definition(history, policy, schedule) -> None:
    scoped = ScopedPolicy(policy, schedule_id=schedule)
    governed_full = [b for b in history if scoped.governs(b) and not b.partial]
    by_definition = spec_kept(governed_full, policy)
    gone = {b.id for b in deleted(history, [scoped])}
    for backup in governed_full:
        assert (backup.id not in gone) == (backup.id in by_definition or backup.pinned)
