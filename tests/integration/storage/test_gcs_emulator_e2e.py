"""drd end to end on gcp-storage-emulator, the second GCS implementation: two regions in it,
a files source backed up, listed, restored byte for byte and restore-tested, through the real
CLI; and the bucket's soft-delete policy (which this emulator reports, as GCS does) moves the
deletion age forward so that nothing outlives max_age."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.drdenv import DrdEnv
from tests.support.gcs_emulator import StorageEmulator

pytestmark = pytest.mark.integration


def make_env(tmp_path: Path, emulator: StorageEmulator) -> tuple[DrdEnv, Path]:
    env = DrdEnv(tmp_path)
    for name in ("eu", "us"):
        emulator.create_bucket(f"drd-{name}")
        env.regions.append(
            {
                "name": name,
                "url": f"gs://drd-{name}/backups",
                "project": "drd-test",
                "endpoint": emulator.endpoint,
                "credentials": {"source": "anonymous"},
                "chunk_size": "256KiB",
                "retry_deadline": "5s",
            }
        )
    tree = tmp_path / "data"
    (tree / "nested" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "nested" / "big.bin").write_bytes(bytes(range(256)) * 4000)
    (tree / "nested" / "deeper" / "ünï.txt").write_text("ü\n")
    env.add_plan("p", [{"name": "tree", "kind": "files", "path": str(tree)}])
    env.write()
    return env, tree


def test_backup_restore_and_restore_test(tmp_path: Path, gcs_emulator: StorageEmulator) -> None:
    env, tree = make_env(tmp_path, gcs_emulator)
    backup_id = env.backup_id_of(env.ok("backup", "p/tree"), "p/tree")
    listed = json.loads(env.ok("list", "p/tree", "--json").stdout)["backups"]
    (entry,) = listed
    assert entry["backup_id"] == backup_id and entry["regions"] == ["eu", "us"]
    target = tmp_path / "restored"
    env.ok("restore", "p/tree", "--to", str(target), "--region", "us")
    for path in tree.rglob("*"):
        twin = target / path.relative_to(tree)
        assert twin.exists(), twin
        if path.is_file():
            assert twin.read_bytes() == path.read_bytes()
    (report,) = json.loads(env.ok("restore-test", "p", "--json").stdout)["reports"]
    assert report["result"] == "passed", report


def test_soft_delete_moves_the_deletion_age_forward(
    tmp_path: Path, gcs_emulator: StorageEmulator
) -> None:
    env, _ = make_env(tmp_path, gcs_emulator)
    proc = env.run("prune", "p", "--dry-run")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for region in ("eu", "us"):
        assert (
            f"region {region} deletes its copies at age 7d (its storage keeps deleted data 7d)"
            in out
        )
