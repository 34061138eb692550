"""Retention: which backups of a target to keep. Pure logic, no I/O.

A policy combines rules; a backup is kept when **any** rule keeps it:

- ``keep_last`` N: the N newest backups;
- ``max_age_days`` D: every backup at most D days old;
- ``keep_daily`` / ``keep_weekly`` / ``keep_monthly`` N: for each of the N newest calendar days
  (ISO weeks, months; UTC) that have backups, the newest backup of that period;
- ``min_keep`` (default 1, at least 1): the newest backups, always, whatever the other rules say,
  so that age-based rules never delete the last good backups while new backups keep failing.

A policy with no rule but ``min_keep`` deletes nothing. Only complete backups are ever planned
(a failed run leaves no manifest), so "newest" always means newest *successful*.

Which backups a policy governs, and the rails that keep the wrong ones from being deleted:

- a schedule's policy governs the backups that schedule made, and manual backups only with
  ``include_manual``; a target's own policy governs every backup of the target. A backup no
  policy governs (a manual one, one of a deleted schedule) is kept;
- a *partial* backup (some collections or tables) is never one of the newest that ``keep_*`` and
  ``min_keep`` count, so a one-off backup of one table cannot push a full backup out; only
  ``max_age_days`` deletes it (without that rule it is kept);
- a *pinned* backup is always kept. It still counts as a backup for ``keep_last`` and the
  periods: pinning one keeps it, it does not make room for one more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.core.errors import ValidationFailed
from shared.domain.jobs import iso_utc

_RULES = ("keep_last", "max_age_days", "keep_daily", "keep_weekly", "keep_monthly")
# "Now minus that many days" must stay a date; a hundred years is more than any policy needs.
MAX_AGE_DAYS = 36_500
_PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar()[:2]),
    "keep_monthly": lambda t: (t.year, t.month),
}


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    max_age_days: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    min_keep: int = 1
    include_manual: bool = False  # a schedule's policy also governs the target's manual backups

    @property
    def deletes_anything(self) -> bool:
        return any(getattr(self, rule) is not None for rule in _RULES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, pointer: str = "/retention") -> RetentionPolicy:
        """Validate a policy from JSON; errors point at the offending field."""
        data = dict(data or {})
        errors = [
            {"pointer": f"{pointer}/{key}", "detail": "unknown retention rule"}
            for key in sorted(set(data) - {*_RULES, "min_keep", "include_manual"})
        ]
        if "include_manual" in data and not isinstance(data["include_manual"], bool):
            errors.append({"pointer": f"{pointer}/include_manual", "detail": "must be true or false"})
        for key in (*_RULES, "min_keep"):
            value = data.get(key)
            if value is None:
                continue
            low = 1 if key == "min_keep" else 0
            high = MAX_AGE_DAYS if key == "max_age_days" else None
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bounds = f">= {low}" + (f" and <= {high}" if high else "")
                errors.append({"pointer": f"{pointer}/{key}", "detail": f"must be a whole number {bounds}"})
        if errors:
            raise ValidationFailed("The retention policy is invalid: " + "; ".join(e["pointer"] for e in errors), errors)
        return cls(**{key: data[key] for key in data if data[key] is not None})


@dataclass(frozen=True)
class BackupRef:
    id: str
    created_at: datetime
    schedule_id: str | None = None  # None: made by hand (POST /backups)
    partial: bool = False
    pinned: bool = False


@dataclass(frozen=True)
class ScopedPolicy:
    """A policy with the backups it governs: those of schedule ``schedule_id`` (and the manual
    ones when the policy includes them), or every backup of the target when ``schedule_id`` is None."""

    policy: RetentionPolicy
    schedule_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.policy.to_dict(), "schedule_id": self.schedule_id}

    def governs(self, backup: BackupRef) -> bool:
        if self.schedule_id is None:
            return True
        if backup.schedule_id is None:
            return self.policy.include_manual
        return backup.schedule_id == self.schedule_id


@dataclass(frozen=True)
class RetentionDecision:
    backup: BackupRef
    keep: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup.id,
            "created_at": iso_utc(self.backup.created_at),
            "keep": self.keep,
            "reasons": list(self.reasons),
        }


def newest_first(backups: Iterable[BackupRef]) -> list[BackupRef]:
    return sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)


def plan_retention(
    backups: Iterable[BackupRef], policies: Iterable[RetentionPolicy | ScopedPolicy], now: datetime
) -> list[RetentionDecision]:
    """Decide for each backup, newest first. A bare :class:`RetentionPolicy` governs every
    backup. Several policies (e.g. two schedules of one target) combine safely: a backup is
    kept when any of them keeps it, and a backup none of them governs is kept."""
    ordered = newest_first(backups)
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}

    def keep(backup: BackupRef, reason: str) -> None:
        if reason not in reasons[backup.id]:
            reasons[backup.id].append(reason)

    for backup in ordered:
        if backup.pinned:
            keep(backup, "pinned")
    governed: set[str] = set()
    for scoped in (p if isinstance(p, ScopedPolicy) else ScopedPolicy(p) for p in policies):
        mine = [b for b in ordered if scoped.governs(b)]
        governed.update(b.id for b in mine)
        for backup, why in _kept_by(scoped.policy, mine, now):
            for reason in why:
                keep(backup, reason)
    for backup in ordered:
        if backup.id not in governed:
            keep(backup, "no policy governs it")
    return [RetentionDecision(b, bool(reasons[b.id]), tuple(reasons[b.id])) for b in ordered]


def _kept_by(policy: RetentionPolicy, governed: list[BackupRef], now: datetime) -> list[tuple[BackupRef, list[str]]]:
    kept: dict[str, tuple[BackupRef, list[str]]] = {}

    def keep(backup: BackupRef, reason: str) -> None:
        kept.setdefault(backup.id, (backup, []))[1].append(reason)

    if not policy.deletes_anything:
        for backup in governed:
            keep(backup, "no deleting rule")
        return list(kept.values())
    # Only full backups are counted as "the newest N"; partial ones are deleted by age alone.
    ordered = [b for b in governed if not b.partial]
    for backup in ordered[: policy.min_keep]:
        keep(backup, "min_keep")
    if policy.keep_last:
        for backup in ordered[: policy.keep_last]:
            keep(backup, "keep_last")
    if policy.max_age_days is not None:
        cutoff = now - timedelta(days=policy.max_age_days)
        for backup in governed:
            if backup.created_at >= cutoff:
                keep(backup, "max_age_days")
    else:
        for backup in governed:
            if backup.partial:
                keep(backup, "partial")
    for rule, period_of in _PERIODS.items():
        count = getattr(policy, rule)
        if not count:
            continue
        seen: set[tuple[int, ...]] = set()
        for backup in ordered:  # newest first: the first one seen in a period is its newest
            period = period_of(backup.created_at)
            if period in seen:
                continue
            seen.add(period)
            if len(seen) > count:
                break
            keep(backup, rule)
    return list(kept.values())
