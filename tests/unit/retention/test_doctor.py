"""drd.retention.doctor: the write-read-delete probe, storage classes against the minimum
storage duration, and settings that cannot be read failing the doctor.

fake-gcs-server reports every bucket as STANDARD (it ignores the class and Autoclass a bucket
is created with), so what GCS reports is taken from recorded bucket resources (the JSON API's
`buckets.get` answer) here."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import storage

from drd.config.loader import load_config
from drd.errors import PermanentStorageError
from drd.repository.catalog import build_catalog
from drd.retention.doctor import (
    PROBE_PREFIX,
    doctor_json,
    format_doctor,
    probe,
    run_doctor,
    storage_class_findings,
)
from drd.storage.base import DeletionSettings, Storage
from drd.storage.faults import FaultyStorage
from drd.storage.gcs import deletion_settings_from_bucket
from drd.storage.local import LocalStorage
from drd.storage.memory import MemoryStorage
from tests.support.drdenv import DrdEnv

D = timedelta(days=1)


async def test_probe_writes_reads_and_deletes_and_leaves_nothing() -> None:
    region = MemoryStorage("a")
    assert await probe(region) is None
    assert await region.list() == []


async def test_a_missing_local_directory_fails_the_probe(tmp_path: Path) -> None:
    region = LocalStorage("a", tmp_path / "not-mounted")
    problem = await probe(region)
    assert problem is not None and "cannot write" in problem and "not-mounted" in problem
    assert not (tmp_path / "not-mounted").exists()  # the probe does not create the root


@pytest.mark.parametrize(
    ("op", "step"), [("get", "read back"), ("delete", "delete"), ("stat", "check the deletion of")]
)
async def test_each_step_of_the_probe_is_named_when_it_fails(op: str, step: str) -> None:
    inner = MemoryStorage("a")
    region = FaultyStorage(inner)
    region.fail(op, PermanentStorageError("injected"), times=1)
    problem = await probe(region)
    assert problem is not None and f"cannot {step} the probe object" in problem
    assert "injected" in problem
    assert await inner.list() == []  # cleaned up after a failed read or check too


async def test_a_probe_left_behind_is_neither_a_backup_nor_a_leftover() -> None:
    region = MemoryStorage("a")
    await region.put(f"{PROBE_PREFIX}probe-0123456789abcdef", b"x" * 64)
    catalog = await build_catalog([region], None)
    assert catalog.entries == [] and catalog.orphans == []


# (bucket resource as buckets.get returns it, severities of the findings at 14 days)
CLASSES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("standard", {"storageClass": "STANDARD"}, []),
    ("legacy regional", {"storageClass": "REGIONAL"}, []),
    ("nearline", {"storageClass": "NEARLINE"}, ["error"]),
    ("coldline", {"storageClass": "COLDLINE"}, ["error"]),
    ("archive", {"storageClass": "ARCHIVE"}, ["error"]),
    (
        "autoclass, default terminal class",
        {"storageClass": "STANDARD", "autoclass": {"enabled": True}},
        ["info"],
    ),
    (
        "autoclass ending in archive",
        {
            "storageClass": "STANDARD",
            "autoclass": {"enabled": True, "terminalStorageClass": "ARCHIVE"},
        },
        ["info"],
    ),
    ("a class GCS may add later", {"storageClass": "FROZEN"}, ["warning"]),
    ("no class reported", {}, []),
]


def bucket(resource: dict[str, Any]) -> Any:
    b = storage.Bucket(None, "acme-drd-ew1")
    b._set_properties({"name": "acme-drd-ew1", "kind": "storage#bucket", **resource})
    return b


@pytest.mark.parametrize(
    ("resource", "severities"), [c[1:] for c in CLASSES], ids=[c[0] for c in CLASSES]
)
def test_storage_class_against_the_minimum_storage_duration(
    resource: dict[str, Any], severities: list[str]
) -> None:
    settings = deletion_settings_from_bucket(bucket(resource))
    found = storage_class_findings("ew1", settings, 14 * D)
    assert [f.severity for f in found] == severities


def test_a_cold_class_names_its_minimum_and_the_deletion_age() -> None:
    settings = deletion_settings_from_bucket(bucket({"storageClass": "COLDLINE"}))
    (finding,) = storage_class_findings("ew1", settings, 7 * D)
    assert "COLDLINE" in finding.message and "90d" in finding.message
    assert "7d" in finding.message


def test_autoclass_terminal_class_is_read() -> None:
    settings = deletion_settings_from_bucket(
        bucket({"autoclass": {"enabled": True, "terminalStorageClass": "ARCHIVE"}})
    )
    assert settings.autoclass_terminal == "ARCHIVE"
    (finding,) = storage_class_findings("ew1", settings, 14 * D)
    assert "ARCHIVE" in finding.message and "no minimum storage duration" in finding.message
    off = deletion_settings_from_bucket(bucket({"autoclass": {"enabled": False}}))
    assert off.autoclass_terminal is None


class _Settings(MemoryStorage):
    def __init__(self, name: str, settings: DeletionSettings) -> None:
        super().__init__(name)
        self._settings = settings

    async def deletion_settings(self) -> DeletionSettings:
        return self._settings


@pytest.fixture
def env(tmp_path: Path) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("p", [{"name": "tree", "kind": "files", "path": str(tmp_path)}])
    env.write()
    return env


async def test_settings_that_cannot_be_read_fail_the_doctor(env: DrdEnv) -> None:
    cfg = load_config(env.config_path)
    unknown = DeletionSettings(
        soft_delete=7 * D, known=False, note="gs://b: no permission (storage.buckets.get)"
    )
    regions: list[Storage] = [MemoryStorage("a"), _Settings("b", unknown)]
    report = await run_doctor(cfg, regions)
    assert report.failed and report.retention_failed and not report.unusable_regions
    lines = format_doctor(report)
    assert "  error: deletion settings unknown (gs://b: no permission" in "\n".join(lines)
    assert lines[-3:] == [
        "retention: FAILED: see the errors above",
        "regions: ok (all usable)",
        "doctor: FAILED",
    ]


async def test_a_cold_bucket_fails_the_plans_that_use_it(env: DrdEnv) -> None:
    cfg = load_config(env.config_path)
    cold = DeletionSettings(storage_class="NEARLINE", note="gs://b")
    report = await run_doctor(cfg, [MemoryStorage("a"), _Settings("b", cold)])
    assert report.failed and not report.unusable_regions
    out = "\n".join(format_doctor(report))
    assert "region b: error: the bucket's default storage class NEARLINE" in out
    data = doctor_json(report)
    assert data["ok"] is False and data["retention_ok"] is False
    (plan,) = data["plans"]
    assert [f["severity"] for f in plan["storage_class_findings"]] == ["error"]
    assert plan["deleted_at_seconds"] == {"a": 14 * 86400, "b": 14 * 86400}


async def test_all_good_is_ok_in_text_and_json(env: DrdEnv) -> None:
    cfg = load_config(env.config_path)
    report = await run_doctor(cfg, [MemoryStorage("a"), MemoryStorage("b")])
    assert not report.failed
    assert format_doctor(report)[-1] == "doctor: ok"
    data = doctor_json(report)
    assert data["ok"] is True
    assert [(r["region"], r["usable"], r["probe_error"]) for r in data["regions"]] == [
        ("a", True, None),
        ("b", True, None),
    ]


async def test_a_clean_up_delete_that_hangs_is_bounded_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("drd.retention.doctor._CLEANUP_TIMEOUT", 0.1)
    region = FaultyStorage(MemoryStorage("a"))
    region.fail("get", PermanentStorageError("injected"), times=1)
    region.add_latency(3600, op="delete")  # the region never answers a delete
    async with asyncio.timeout(30):  # a hang fails the test instead of stalling it
        problem = await probe(region)
    assert problem is not None and "cannot read back the probe object" in problem
    assert "clean-up" in problem and "no answer" in problem
    assert PROBE_PREFIX in problem  # where the object was left


async def test_a_region_hanging_on_delete_cannot_hold_the_doctor_past_its_timeout(
    env: DrdEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("drd.retention.doctor._TIMEOUT", 0.2)
    monkeypatch.setattr("drd.retention.doctor._CLEANUP_TIMEOUT", 0.1)
    cfg = load_config(env.config_path)
    hanging = FaultyStorage(MemoryStorage("b"))
    hanging.add_latency(3600, op="delete")
    async with asyncio.timeout(30):
        report = await run_doctor(cfg, [MemoryStorage("a"), hanging])
    assert report.unusable_regions == ["b"]
    (check,) = [c for c in report.regions if c.region == "b"]
    assert check.probe_error is not None and "no answer" in check.probe_error
