"""drd.retention.policy: the pure policy (table-driven, injected `now`), and deletion settings:
what a
bucket's soft delete, versioning, lifecycle, retention policy and holds mean for the promise.

fake-gcs-server implements none of those bucket settings, so they are tested here against the
settings objects themselves: DeletionSettings, and google.cloud.storage Bucket objects built
from bucket resources as the JSON API returns them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import storage

from drd.layout import SourceRef
from drd.retention.policy import (
    LIFECYCLE_LAG,
    Backup,
    RetentionPolicy,
    apply_policy,
    deletion_delay,
    deletion_lead,
    describe,
    region_findings,
)
from drd.storage.base import DeletionSettings
from drd.storage.gcs import GCS_DEFAULT_SOFT_DELETE, deletion_settings_from_bucket

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
REF = SourceRef("billing", "db")
D, H, M, S = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)


def backup(age: timedelta, *, committed: bool = True, ref: SourceRef = REF) -> Backup:
    captured = NOW - age
    return Backup(ref, f"{captured:%Y%m%dT%H%M%SZ}-0000000{int(committed)}", captured, committed)


# --------------------------------------------------------------------------------------------
# apply_policy

POLICY = RetentionPolicy(max_age=14 * D)

# (what, policy, age, committed, destroyed?, words the reason must contain)
CASES: list[tuple[str, RetentionPolicy, timedelta, bool, bool, str]] = [
    ("fresh backup", POLICY, 1 * H, True, False, "destroyed in 13d23h"),
    ("a second short of max_age", POLICY, 14 * D - S, True, False, "destroyed in 1s"),
    ("exactly max_age", POLICY, 14 * D, True, True, "reached max_age 14d"),
    ("long overdue", POLICY, 40 * D, True, True, "age 40d: reached max_age 14d"),
    ("clock skew", POLICY, -2 * H, True, False, "in the future"),
    ("young leftover", POLICY, 2 * H, False, False, "an upload may still be running"),
    ("leftover at the grace", POLICY, 6 * H, False, True, "older than the 6h grace"),
    ("leftover past max_age", POLICY, 15 * D, False, True, "reached max_age 14d"),
    (
        "leftover past max_age but inside the grace",
        RetentionPolicy(max_age=1 * H, orphan_grace=6 * H),
        2 * H,
        False,
        True,
        "reached max_age 1h",
    ),
    (
        "soft delete 7d: deleted at 7d",
        RetentionPolicy(max_age=14 * D, deletion_delay=7 * D),
        7 * D,
        True,
        True,
        "reached 7d (max_age 14d minus 7d the storage keeps deleted data)",
    ),
    (
        "soft delete 7d: kept until 7d",
        RetentionPolicy(max_age=14 * D, deletion_delay=7 * D),
        7 * D - M,
        True,
        False,
        "destroyed in 1m",
    ),
]


@pytest.mark.parametrize(
    ("policy", "age", "committed", "destroyed", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_apply_policy(
    policy: RetentionPolicy, age: timedelta, committed: bool, destroyed: bool, words: str
) -> None:
    b = backup(age, committed=committed)
    decision = apply_policy([b], policy, NOW)
    assert (b in decision.destroy) is destroyed
    assert (b in decision.keep) is not destroyed
    assert words in decision.reasons[b.key]


def test_decides_every_backup_once_and_reports_the_next_expiry() -> None:
    other = SourceRef("billing", "files")
    backups = [
        backup(20 * D),
        backup(13 * D),
        backup(1 * D),
        backup(3 * H, committed=False),
        backup(15 * D, ref=other),
        backup(2 * D, ref=other),
    ]
    decision = apply_policy(reversed(backups), POLICY, NOW)
    assert sorted(map(str, decision.destroy)) == sorted(map(str, [backups[0], backups[4]]))
    assert len(decision.keep) == 4 and set(decision.reasons) == {b.key for b in backups}
    # The leftover expires first (captured 3h ago, 6h grace), then the 13-day-old backup.
    assert decision.next_expiry() == NOW + 3 * H
    assert decision.expires[backups[1].key] == NOW + 1 * D
    # Kept in capture order per source: the decision reads like a listing.
    assert [b.ref.source for b in decision.keep] == ["db", "db", "db", "files"]


def test_empty_catalog() -> None:
    decision = apply_policy([], POLICY, NOW)
    assert decision.keep == decision.destroy == [] and decision.next_expiry() is None


# --------------------------------------------------------------------------------------------
# deletion delay and findings

# (what, settings, delay)
DELAYS: list[tuple[str, DeletionSettings, timedelta | None]] = [
    ("immediate", DeletionSettings(), timedelta(0)),
    ("soft delete", DeletionSettings(soft_delete=7 * D), 7 * D),
    ("versioning, no rule", DeletionSettings(versioning=True), None),
    (
        "versioning, rule",
        DeletionSettings(versioning=True, noncurrent_deleted_after=2 * D),
        2 * D + LIFECYCLE_LAG,
    ),
    (
        "versioning, rule, soft delete",
        DeletionSettings(soft_delete=3 * D, versioning=True, noncurrent_deleted_after=2 * D),
        5 * D + LIFECYCLE_LAG,
    ),
    ("event-based hold", DeletionSettings(event_based_hold=True), None),
    # A retention policy is not a delay: it forbids deleting early (see the findings).
    ("retention policy", DeletionSettings(retention_period=3 * D), timedelta(0)),
]


@pytest.mark.parametrize(("settings", "delay"), [c[1:] for c in DELAYS], ids=[c[0] for c in DELAYS])
def test_deletion_delay(settings: DeletionSettings, delay: timedelta | None) -> None:
    assert deletion_delay(settings) == delay


# (what, settings, max_age, severities, words in the first non-info finding or the info)
FINDINGS: list[tuple[str, DeletionSettings, timedelta, list[str], str]] = [
    ("immediate", DeletionSettings(), 14 * D, [], ""),
    ("soft delete 7d", DeletionSettings(soft_delete=7 * D), 14 * D, ["info"], "deleted at age 7d"),
    (
        "soft delete 14d",
        DeletionSettings(soft_delete=14 * D),
        14 * D,
        ["error"],
        "destroying backups within 14 days is impossible",
    ),
    (
        "soft delete 7d, plan keeps 5d",
        DeletionSettings(soft_delete=7 * D),
        5 * D,
        ["error"],
        "within max_age 5d is impossible",
    ),
    (
        "versioning without a rule",
        DeletionSettings(versioning=True),
        14 * D,
        ["error"],
        "no lifecycle rule deletes them",
    ),
    (
        "default event-based hold",
        DeletionSettings(event_based_hold=True),
        14 * D,
        ["error"],
        "event-based hold",
    ),
    (
        "retention policy longer than max_age",
        DeletionSettings(retention_period=15 * D),
        14 * D,
        ["error"],
        "retention policy forbids deleting objects younger than 15d",
    ),
    (
        "retention policy plus soft delete too long",
        DeletionSettings(retention_period=10 * D, soft_delete=7 * D),
        14 * D,
        ["error"],
        "impossible",
    ),
    ("retention policy that fits", DeletionSettings(retention_period=3 * D), 14 * D, [], ""),
    (
        "object retention",
        DeletionSettings(object_retention=True),
        14 * D,
        ["warning"],
        "object retention is enabled",
    ),
    (
        "lifecycle deletes live objects early",
        DeletionSettings(live_deleted_after=3 * D),
        14 * D,
        ["warning"],
        "backups disappear earlier",
    ),
    (
        "unknown settings",
        DeletionSettings(soft_delete=7 * D, known=False, note="no permission"),
        14 * D,
        ["warning", "info"],
        "deletion settings unknown (no permission)",
    ),
]


@pytest.mark.parametrize(
    ("settings", "max_age", "severities", "words"),
    [c[1:] for c in FINDINGS],
    ids=[c[0] for c in FINDINGS],
)
def test_region_findings(
    settings: DeletionSettings, max_age: timedelta, severities: list[str], words: str
) -> None:
    found = region_findings("ew1", settings, max_age)
    assert [f.severity for f in found] == severities
    if words:
        assert words in found[0].message, found[0].message
    assert all(f.region == "ew1" for f in found)


def test_deletion_lead_is_the_slowest_region_that_can_keep_the_promise() -> None:
    lead, found = deletion_lead(
        14 * D,
        {
            "a": DeletionSettings(),
            "b": DeletionSettings(soft_delete=3 * D),
            "c": DeletionSettings(soft_delete=7 * D),
            # Cannot keep the promise: reported, and left out so that the other regions do not
            # destroy every backup right after it is made.
            "d": DeletionSettings(soft_delete=30 * D),
        },
    )
    assert lead == 7 * D
    assert [(f.region, f.severity) for f in found] == [("b", "info"), ("c", "info"), ("d", "error")]


def test_describe_names_every_setting() -> None:
    text = describe(
        DeletionSettings(
            soft_delete=7 * D,
            versioning=True,
            noncurrent_deleted_after=3 * D,
            retention_period=1 * D,
            object_retention=True,
            note="gs://b",
        )
    )
    for words in (
        "soft delete 7d",
        "noncurrent versions deleted after 3d (+1d lifecycle lag)",
        "retention policy 1d",
        "object retention enabled",
        "gone 11d after deletion",
        "(gs://b)",
    ):
        assert words in text, text
    assert describe(DeletionSettings()) == (
        "no soft delete, versioning off: deleted data is gone 0s after deletion"
    )


# --------------------------------------------------------------------------------------------
# GCS bucket settings, from Bucket objects (fake-gcs-server has none of these settings)


def bucket(**resource: Any) -> Any:
    b = storage.Bucket(None, "acme-drd-ew1")
    b._set_properties({"name": "acme-drd-ew1", **resource})
    return b


def delete_rule(**condition: Any) -> dict[str, Any]:
    return {"action": {"type": "Delete"}, "condition": condition}


# (what, bucket resource, object prefix, expected settings fields)
BUCKETS: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("a new bucket as fake-gcs-server reports it", {"versioning": {"enabled": False}}, "", {}),
    (
        "soft delete (the GCS default for new buckets)",
        {"softDeletePolicy": {"retentionDurationSeconds": "604800"}},
        "",
        {"soft_delete": 7 * D},
    ),
    ("soft delete switched off", {"softDeletePolicy": {"retentionDurationSeconds": "0"}}, "", {}),
    (
        "versioning, noncurrent versions deleted after 3 days",
        {
            "versioning": {"enabled": True},
            "lifecycle": {"rule": [delete_rule(daysSinceNoncurrentTime=3, isLive=False)]},
        },
        "",
        {"versioning": True, "noncurrent_deleted_after": 3 * D},
    ),
    (
        "an age rule bounds noncurrent versions too, and deletes live objects",
        {"versioning": {"enabled": True}, "lifecycle": {"rule": [delete_rule(age=30)]}},
        "",
        {"versioning": True, "noncurrent_deleted_after": 30 * D, "live_deleted_after": 30 * D},
    ),
    (
        "the shortest of several rules counts",
        {
            "versioning": {"enabled": True},
            "lifecycle": {
                "rule": [
                    delete_rule(daysSinceNoncurrentTime=10),
                    delete_rule(daysSinceNoncurrentTime=2, isLive=False),
                    {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"}},
                ]
            },
        },
        "",
        {"versioning": True, "noncurrent_deleted_after": 2 * D},
    ),
    (
        "a rule on newer versions never fires for drd's objects",
        {
            "versioning": {"enabled": True},
            "lifecycle": {"rule": [delete_rule(numNewerVersions=1, isLive=False)]},
        },
        "",
        {"versioning": True},
    ),
    (
        "a rule on another prefix does not apply",
        {
            "versioning": {"enabled": True},
            "lifecycle": {"rule": [delete_rule(daysSinceNoncurrentTime=1, matchesPrefix=["tmp/"])]},
        },
        "drd/",
        {"versioning": True},
    ),
    (
        "a rule on drd's prefix applies",
        {
            "versioning": {"enabled": True},
            "lifecycle": {"rule": [delete_rule(daysSinceNoncurrentTime=1, matchesPrefix=["drd"])]},
        },
        "drd/",
        {"versioning": True, "noncurrent_deleted_after": 1 * D},
    ),
    (
        "a rule for one suffix misses the manifests",
        {
            "versioning": {"enabled": True},
            "lifecycle": {"rule": [delete_rule(daysSinceNoncurrentTime=1, matchesSuffix=[".drd"])]},
        },
        "",
        {"versioning": True},
    ),
    (
        "retention policy, holds, object retention",
        {
            "retentionPolicy": {"retentionPeriod": "86400", "isLocked": True},
            "defaultEventBasedHold": True,
            "objectRetention": {"mode": "Enabled"},
        },
        "",
        {"retention_period": 1 * D, "event_based_hold": True, "object_retention": True},
    ),
]


@pytest.mark.parametrize(
    ("resource", "prefix", "expected"), [c[1:] for c in BUCKETS], ids=[c[0] for c in BUCKETS]
)
def test_deletion_settings_from_bucket(
    resource: dict[str, Any], prefix: str, expected: dict[str, Any]
) -> None:
    settings = deletion_settings_from_bucket(bucket(**resource), prefix)
    assert settings == DeletionSettings(note="gs://acme-drd-ew1", **expected)


def test_default_gcs_bucket_halves_a_14_day_plan() -> None:
    """A bucket created with today's GCS defaults keeps deleted objects 7 days."""
    settings = deletion_settings_from_bucket(
        bucket(softDeletePolicy={"retentionDurationSeconds": str(7 * 86400)})
    )
    assert settings.soft_delete == GCS_DEFAULT_SOFT_DELETE
    lead, found = deletion_lead(14 * D, {"ew1": settings})
    assert lead == 7 * D and [f.severity for f in found] == ["info"]


def test_versioned_bucket_without_cleanup_is_flagged() -> None:
    settings = deletion_settings_from_bucket(bucket(versioning={"enabled": True}))
    (finding,) = region_findings("ew1", settings, 14 * D)
    assert finding.severity == "error" and "never" not in finding.message
    assert "versioning" in finding.message


async def test_gcs_without_permission_to_read_the_bucket_assumes_the_default() -> None:
    from google.api_core import exceptions as api_exceptions
    from google.auth.credentials import AnonymousCredentials

    from drd.storage.gcs import GCSStorage

    region = GCSStorage(
        "ew1",
        "acme-drd-ew1",
        project="test",
        endpoint="http://127.0.0.1:9",  # never contacted: get_bucket is replaced below
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise api_exceptions.Forbidden("storage.buckets.get denied")

    region._client.get_bucket = forbidden  # type: ignore[method-assign]
    try:
        settings = await region.deletion_settings()
    finally:
        await region.close()
    assert not settings.known and settings.soft_delete == GCS_DEFAULT_SOFT_DELETE
    assert "storage.buckets.get" in settings.note
    severities = [f.severity for f in region_findings("ew1", settings, 14 * D)]
    assert severities == ["warning", "info"]
