"""Issue 13: a writer to ONE region can never roll back, substitute, hide or destroy backups.

Every attack is driven with the storage directly (tests.support.rawregion: files of a local
region, objects of a fake-gcs-server bucket through google-cloud-storage), then drd is run as
the operator runs it (the CLI, or the daemon's loops), and the test asserts what the operator
sees (exit code, message, metric) and what remains in every region afterwards.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from drd import crypto
from drd.layout import SourceRef
from drd.repository.manifest import Manifest
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.rawregion import RawRegion

pytestmark = pytest.mark.integration

P1F, P1D, P2F = SourceRef("p1", "files"), SourceRef("p1", "db"), SourceRef("p2", "files")


@dataclass
class World:
    env: DrdEnv
    raw: dict[str, RawRegion]
    servers: dict[str, FakeGcsServer]
    src: Path
    tmp: Path

    @property
    def keyring(self) -> crypto.Keyring:
        return crypto.Keyring.parse(self.env.key, "test")

    def backup(self, what: str) -> str:
        return self.env.backup_id_of(self.env.ok("backup", what), what)

    def snapshot(self) -> dict[str, dict[str, bytes]]:
        return {name: raw.snapshot() for name, raw in self.raw.items()}

    def tree(self, name: str) -> dict[str, bytes]:
        root = self.src / name
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=["local", "gcs"])
def world(request: pytest.FixtureRequest, tmp_path: Path, gcs_regions: StartRegions) -> World:
    env = DrdEnv(tmp_path)
    raw: dict[str, RawRegion] = {}
    servers: dict[str, FakeGcsServer] = {}
    if request.param == "local":
        for name in ("a", "b"):
            raw[name] = RawRegion.local(name, env.add_local_region(name))
    else:
        for name, server in zip(
            ("a", "b"), gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"]), strict=True
        ):
            env.add_gcs_region(name, server, f"drd-{name}")
            raw[name] = RawRegion.gcs(name, server, f"drd-{name}")
            servers[name] = server
    src = tmp_path / "src"
    for name, size in (("p1-files", 40_000), ("p2-files", 50_000)):
        (src / name).mkdir(parents=True)
        (src / name / "data.bin").write_bytes(os.urandom(size))
        (src / name / "owner.txt").write_text(f"this is {name}\n")
    import sqlite3

    with sqlite3.connect(src / "p1.db") as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.execute("INSERT INTO t VALUES ('p1 database')")
    env.add_plan(
        "p1",
        [
            {"name": "files", "kind": "files", "path": str(src / "p1-files")},
            {"name": "db", "kind": "sqlite", "path": str(src / "p1.db")},
        ],
    )
    env.add_plan("p2", [{"name": "files", "kind": "files", "path": str(src / "p2-files")}])
    env.write()
    return World(env, raw, servers, src, tmp_path)


# ------------------------------------------------------------------------------ must-hold 3


def foreign_manifest(world: World, raw: bytes, ref: SourceRef, backup_id: str) -> bytes:
    """What someone holding another key writes: a manifest for this very place, sealed with
    their key (its key id is not in drd's keyring)."""
    manifest = Manifest.open(world.keyring, raw, "a", ref, backup_id)
    attacker = crypto.Keyring.parse(crypto.generate_key(), "attacker")
    public = {**asdict(manifest.public), "key_id": attacker.primary.key_id}
    return crypto.seal_manifest(
        attacker, public, asdict(manifest.body), location=ref.manifest_key(backup_id)
    )


def test_one_bad_region_cannot_stop_a_restore(world: World) -> None:
    env, a, b = world.env, world.raw["a"], world.raw["b"]
    old = world.backup("p1/files")
    new = world.backup("p1/files")
    (world.src / "p1-files" / "owner.txt").write_text("changed after the newest backup\n")
    target = world.tmp / "restored"
    expected = None

    def restore_ok(*flags: str) -> tuple[str, str]:
        nonlocal expected
        if target.exists():
            import shutil

            shutil.rmtree(target)
        proc = env.ok("restore", "p1/files", "--to", str(target), *flags)
        assert f"restored p1/files@{new} from region b" in proc.stdout, proc.stdout
        return proc.stdout, proc.stderr

    genuine = a.read(P1F.manifest_key(new))
    # An older manifest alone swapped over the newest one in region a.
    a.write(P1F.manifest_key(new), a.read(P1F.manifest_key(old)))
    _, err = restore_ok("--region", "a")
    assert f"region a holds no usable copy: manifest unusable: a:p1/files/{new}/" in err
    # A manifest sealed with a foreign key in region a.
    a.write(P1F.manifest_key(new), foreign_manifest(world, genuine, P1F, new))
    _, err = restore_ok("--region", "a")
    assert "region a holds no usable copy" in err and "is not in the keyring" in err
    # The data object altered in place (same size): found only while reading it.
    a.write(P1F.manifest_key(new), genuine)
    a.flip(P1F.data_key(new))
    _, err = restore_ok("--region", "a")
    assert "region a was skipped" in err and "failed authentication" in err

    # Every copy bad: the error names every copy and why; nothing is restored.
    import shutil

    shutil.rmtree(target)
    b.truncate(P1F.data_key(new), 100)
    proc = env.run("restore", "p1/files", "--to", str(target), "--backup", new)
    assert proc.returncode == 5, proc.stderr
    assert new in proc.stderr and not target.exists()
    assert "a: " in proc.stderr and "failed authentication" in proc.stderr
    assert "b: data object truncated: 100 of" in proc.stderr
