"""Issue 13: a writer to ONE region can never roll back, substitute, hide or destroy backups.

Every attack is driven with the storage directly (tests.support.rawregion: files of a local
region, objects of a fake-gcs-server bucket through google-cloud-storage), then drd is run as
the operator runs it (the CLI, or the daemon's loops), and the test asserts what the operator
sees (exit code, message, metric) and what remains in every region afterwards.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import blake3
import pytest

from drd import crypto
from drd.config.loader import load_config
from drd.layout import SourceRef
from drd.metrics import Metrics
from drd.repository.heads import HeadMemory, head_key, read_heads
from drd.repository.manifest import Manifest
from drd.retention.repair import RepairReport, repair
from drd.runtime import open_regions
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.gcsproxy import GcsProxy
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


# ------------------------------------------------------------------------------ must-hold 1


def test_a_backup_copied_under_another_plan_or_source_is_refused(world: World) -> None:
    """A backup directory of p2 copied under p1's path, or a database backup copied under a
    files source, is not that backup: every copy of it is refused, as that copy's integrity
    error, and the newest backup is not silently replaced by an older one."""
    env, a = world.env, world.raw["a"]
    p1f = world.backup("p1/files")
    p1d = world.backup("p1/db")
    p2f = world.backup("p2/files")
    # The attacker copies p2's newest backup under p1/files, with the same id, in region a.
    a.copy_tree(P2F.backup_prefix(p2f), P1F.backup_prefix(p2f))
    # And p1's database backup under p1/files in both regions.
    for raw in world.raw.values():
        raw.copy_tree(P1D.backup_prefix(p1d), P1F.backup_prefix(p1d))
    before = world.snapshot()

    target = world.tmp / "restored"
    proc = env.run("restore", "p1/files", "--to", str(target))
    assert proc.returncode == 5, proc.stderr
    # Both copied backups are unverifiable; taken within a second, either may sort newest.
    newest = re.search(r"the newest backup p1/files@(\S+) cannot be restored", proc.stderr)
    assert newest is not None and newest.group(1) in (p2f, p1d), proc.stderr
    assert "moved from another location" in proc.stderr
    assert f"older backups that verify: {p1f}" in proc.stderr and "--allow-older" in proc.stderr
    assert not target.exists()

    proc = env.run("restore", "p1/files", "--to", str(target), "--backup", p1d)
    assert proc.returncode == 5, proc.stderr
    assert f"backup p1/files@{p1d}" in proc.stderr and "a: " in proc.stderr
    assert "b: " in proc.stderr and "moved from another location" in proc.stderr
    assert not target.exists()

    # Knowingly older: p1's own backup, with the newer one named.
    proc = env.ok("restore", "p1/files", "--to", str(target), "--allow-older")
    assert f"restored p1/files@{p1f}" in proc.stdout
    assert f"NEWER backup p1/files@{p2f} was passed over" in proc.stderr
    assert tree_of(target) == world.tree("p1-files")

    listing = json.loads(env.ok("list", "p1/files", "--json").stdout)["backups"]
    by_id = {b["backup_id"]: b for b in listing}
    assert set(by_id) == {p1f, p1d, p2f}
    assert by_id[p1f]["verified"] and sorted(by_id[p1f]["regions"]) == ["a", "b"]
    assert not by_id[p2f]["verified"] and "moved" in by_id[p2f]["damaged_copies"]["a"]
    assert not by_id[p1d]["verified"]
    assert world.snapshot() == before  # reading never changes a region


def rewrite_as_v1(world: World, ref: SourceRef, backup_id: str) -> None:
    """Turn a backup into exactly what drd wrote before format version 2 (docs/format.md):
    data object version 1 named `data.drd`, a version 1 manifest, same data key."""
    keyring = world.keyring
    a = world.raw["a"]
    mkey, dkey = ref.manifest_key(backup_id), ref.data_key(backup_id)
    manifest = Manifest.open(keyring, a.read(mkey), mkey, ref, backup_id)
    assert manifest.version == 2 and manifest.body.data_format == 2
    pub, body = manifest.public, manifest.body
    data_key = crypto.unwrap_data_key(keyring, pub.key_id, body.wrapped_data_key, backup_id)
    dec = crypto.StreamDecryptor(data_key, backup_id=backup_id, key_id=pub.key_id, object_name=dkey)
    compressed = dec.update(a.read(dkey)) + dec.finalize()
    enc = crypto.StreamEncryptor(
        data_key,
        backup_id=backup_id,
        key_id=pub.key_id,
        object_name="data.drd",
        segment_size=body.segment_size,
        version=1,
    )
    v1 = enc.update(compressed) + enc.finalize()
    old_body = asdict(body)
    del old_body["data_format"]
    old_body.update(
        ciphertext_size=len(v1), ciphertext_digest="blake3:" + blake3.blake3(v1).hexdigest()
    )
    sealed = crypto.seal_manifest(keyring, {**asdict(pub), "format": "drd-backup-1"}, old_body)
    assert json.loads(sealed)["drd_manifest"] == 1
    for raw in world.raw.values():  # the same bytes everywhere, as a backup writes them
        raw.write(dkey, v1)
        raw.write(mkey, sealed)


def test_version_1_backups_stay_readable_and_are_checked_against_their_location(
    world: World,
) -> None:
    env = world.env
    p1f = world.backup("p1/files")
    rewrite_as_v1(world, P1F, p1f)
    target = world.tmp / "v1"
    proc = env.ok("restore", "p1/files", "--to", str(target), "--region", "b")
    assert f"restored p1/files@{p1f} from region b" in proc.stdout
    assert tree_of(target) == world.tree("p1-files")
    # Version 1 has no location in its seal: its public fields are checked against the place.
    for raw in world.raw.values():
        raw.copy_tree(P1F.backup_prefix(p1f), P1D.backup_prefix(p1f))
    proc = env.run("restore", "p1/db", "--to", str(world.tmp / "x.db"), "--backup", p1f)
    assert proc.returncode == 5, proc.stderr
    assert f"manifest of p1/files@{p1f} stored as p1/db@{p1f}" in proc.stderr
    assert not (world.tmp / "x.db").exists()


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


# ------------------------------------------------------------------------------ must-hold 2


def forge(raw: RawRegion, key: str) -> None:
    """Alter a public field of a stored manifest: it stays valid JSON, and fails
    authentication."""
    doc = json.loads(raw.read(key))
    doc["public"]["completed_at"] = "2020-01-01T00:00:00+00:00"
    raw.write(key, json.dumps(doc).encode())


def test_the_newest_backup_is_never_skipped_silently(world: World) -> None:
    env = world.env
    old = world.backup("p1/files")
    new = world.backup("p1/files")
    for raw in world.raw.values():
        forge(raw, P1F.manifest_key(new))
    before = world.snapshot()

    listing = env.ok("list", "p1/files").stdout
    (line,) = [x for x in listing.splitlines() if new in x]
    assert "UNVERIFIED" in line and "manifest failed authentication" in line

    target = world.tmp / "restored"
    proc = env.run("restore", "p1/files", "--to", str(target))
    assert proc.returncode == 5, proc.stderr
    assert f"the newest backup p1/files@{new} cannot be restored" in proc.stderr
    assert "no copy of the manifest can be verified" in proc.stderr
    assert f"a:p1/files/{new}/manifest.json" in proc.stderr
    assert f"b:p1/files/{new}/manifest.json" in proc.stderr
    assert f"older backups that verify: {old}" in proc.stderr and not target.exists()

    proc = env.ok("restore", "p1/files", "--to", str(target), "--allow-older")
    assert f"restored p1/files@{old}" in proc.stdout
    assert f"NEWER backup p1/files@{new} was passed over" in proc.stderr
    assert tree_of(target) == world.tree("p1-files")

    tested = env.run("restore-test", "p1/files")
    assert tested.returncode == 11, tested.stdout + tested.stderr
    assert f"FAILED p1/files@{new} (newest)" in tested.stdout
    assert "integrity_failed: no copy of the manifest can be verified" in tested.stdout
    assert (
        "tested although no copy can be used" in tested.stdout and "never skipped" in tested.stdout
    )

    tested = env.ok("restore-test", "p1/files", "--allow-older", "--json")
    (report,) = json.loads(tested.stdout)["reports"]
    assert report["backup_id"] == old and report["selection"] == "newest-usable"
    assert "--allow-older passed over 1 newer one(s)" in report["selection_reason"]
    assert report["result"] == "passed"
    assert "manifest failed authentication" in report["skipped_newer"][new]
    text = env.ok("restore-test", "p1/files", "--allow-older").stdout
    assert f"PASSED p1/files@{old} (newest-usable)" in text
    assert f"NOT TESTED: newer backup p1/files@{new}: no copy of the manifest" in text
    # The regions hold what they held, plus the restore test reports next to the backups.
    after = world.snapshot()
    for name, objects in after.items():
        added = set(objects) - set(before[name])
        assert added and all("/restore-tests/" in k for k in added)
        assert {k: objects[k] for k in before[name]} == before[name]


def test_a_newest_manifest_unreadable_everywhere_is_named_not_skipped(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    """fake-gcs-server behind a proxy that answers 503 for the newest manifest, longer than
    the retry deadline, in every region."""
    env = DrdEnv(tmp_path)
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("data\n")
    with GcsProxy(servers[0].endpoint) as pa, GcsProxy(servers[1].endpoint) as pb:
        env.add_gcs_region("a", servers[0], "drd-a", endpoint=pa.endpoint)
        env.add_gcs_region("b", servers[1], "drd-b", endpoint=pb.endpoint)
        env.add_plan("p1", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
        env.write()
        old = env.backup_id_of(env.ok("backup", "p1/files"), "p1/files")
        new = env.backup_id_of(env.ok("backup", "p1/files"), "p1/files")
        for proxy in (pa, pb):
            proxy.fail("GET", f"p1/files/{new}/manifest\\.json", 503)

        listing = json.loads(env.ok("list", "p1/files", "--json").stdout)["backups"]
        assert [b["backup_id"] for b in listing] == [old, new]
        assert not listing[1]["verified"] and "503" in listing[1]["problem"]

        proc = env.run("restore", "p1/files", "--to", str(tmp_path / "r"))
        assert proc.returncode == 6, proc.stderr  # a storage failure, named as such
        assert f"the newest backup p1/files@{new} cannot be restored" in proc.stderr
        assert "503" in proc.stderr and not (tmp_path / "r").exists()
        assert pa.hits("GET", f"{new}/manifest") and pb.hits("GET", f"{new}/manifest")

        tested = env.run("restore-test", "p1/files")
        assert tested.returncode == 11
        assert f"FAILED p1/files@{new} (newest) from region -: fetch_failed" in tested.stdout

        proc = env.ok("restore", "p1/files", "--to", str(tmp_path / "r"), "--allow-older")
        assert f"restored p1/files@{old}" in proc.stdout and new in proc.stderr


# ------------------------------------------------------------------------------ must-holds 4, 5


async def run_repair(world: World, plan: str = "p1", **kwargs: Any) -> RepairReport:
    """The daemon's repair step on the regions of the config, as the daemon opens them (with
    its state directory's records, unless told otherwise)."""
    cfg = load_config(world.env.config_path)
    kwargs.setdefault("now", datetime.now(UTC))
    kwargs.setdefault("memory", HeadMemory(cfg.state_dir))
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        return await repair(cfg.plan(plan), regions, world.keyring, **kwargs)


async def test_repair_never_destroys_and_copies_only_verified_copies(world: World) -> None:
    """The issue's attack: an older backup's manifest and data copied over the newest id in
    region a. Repair must not copy the forgery to b (it used to overwrite the genuine newest
    data there); it restores a's copy from b, and never writes over anything."""
    a, b = world.raw["a"], world.raw["b"]
    old = world.backup("p1/files")
    new = world.backup("p1/files")
    genuine = b.snapshot(P1F.backup_prefix(new))
    a.write(P1F.manifest_key(new), a.read(P1F.manifest_key(old)))
    a.write(P1F.data_key(new), a.read(P1F.data_key(old)))
    b_before = b.snapshot()

    report = await run_repair(world)

    assert [(c.backup_id, c.region, c.source_region, c.action) for c in report.repaired] == [
        (new, "a", "b", "replaced")
    ]
    assert report.failed == []
    # Same size (the same tree backed up twice): its bytes proved it was not the backup's.
    assert [(c.backup_id, c.region) for c in report.damaged] == [(new, "a")]
    assert b.snapshot() == b_before  # the genuine copy was only read
    assert a.snapshot(P1F.backup_prefix(new)) == genuine  # a holds the newest backup again
    target = world.tmp / "from-a"
    proc = world.env.ok("restore", "p1/files", "--to", str(target), "--region", "a")
    assert f"restored p1/files@{new} from region a" in proc.stdout
    assert (await run_repair(world)).repaired == []  # nothing left to do


async def test_a_lost_manifest_is_repaired_and_its_data_never_taken_for_a_leftover(
    world: World,
) -> None:
    """min_copies = every region (the billing example): a copy whose manifest was lost (or a
    kill -9 between the two manifest writes) keeps its data through the next backup's leftover
    clean-up, and gets its manifest back from the other region."""
    a, b = world.raw["a"], world.raw["b"]
    first = world.backup("p1/files")
    manifest = b.read(P1F.manifest_key(first))
    b.delete(P1F.manifest_key(first))
    data = b.read(P1F.data_key(first))
    second = world.backup("p1/files")  # its leftover clean-up runs first
    assert b.read(P1F.data_key(first)) == data  # committed in a: not a leftover in b
    report = await run_repair(world)
    assert [(c.backup_id, c.region, c.action) for c in report.repaired] == [
        (first, "b", "manifest")
    ]
    assert b.read(P1F.manifest_key(first)) == manifest == a.read(P1F.manifest_key(first))
    assert b.read(P1F.data_key(first)) == data
    # A truncated copy is replaced; the good copy is only read.
    a_before = a.snapshot()
    b.truncate(P1F.data_key(second), 50)
    report = await run_repair(world)
    assert [(c.backup_id, c.region, c.action) for c in report.repaired] == [
        (second, "b", "replaced")
    ]
    assert b.read(P1F.data_key(second)) == a.read(P1F.data_key(second))
    assert a.snapshot() == a_before
    # True leftovers (no manifest in any region) still go.
    orphan = P1F.data_key("20200101T000000Z-00000000")
    a.write(orphan, b"interrupted")
    world.backup("p1/files")
    assert orphan not in a.list_keys()


async def test_repair_writes_are_create_only_on_gcs(tmp_path: Path, gcs_regions: StartRegions):
    """What fake-gcs-server cannot check (it ignores preconditions on resumable uploads): every
    upload repair makes asks GCS to create, never to replace (ifGenerationMatch=0), which real
    GCS enforces with a 412 (drd: ObjectExists)."""
    env = DrdEnv(tmp_path)
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("data\n")
    with GcsProxy(servers[0].endpoint) as pa, GcsProxy(servers[1].endpoint) as pb:
        env.add_gcs_region("a", servers[0], "drd-a", endpoint=pa.endpoint)
        env.add_gcs_region("b", servers[1], "drd-b", endpoint=pb.endpoint)
        env.add_plan("p1", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
        env.write()
        backup_id = env.backup_id_of(env.ok("backup", "p1/files"), "p1/files")
        raw_b = RawRegion.gcs("b", servers[1], "drd-b")
        raw_b.delete(P1F.data_key(backup_id))
        raw_b.delete(P1F.manifest_key(backup_id))
        world = World(env, {"b": raw_b}, {}, tmp_path / "src", tmp_path)
        pb.log.clear()
        report = await run_repair(world)
        assert [(c.region, c.action) for c in report.repaired] == [("b", "copied")]
        uploads = [t for m, t, _ in pb.log if m == "POST" and "uploadType=resumable" in t]
        assert len(uploads) == 2  # the data object, then the manifest
        assert all("ifGenerationMatch=0" in t for t in uploads), uploads
        assert not [t for m, t, _ in pb.log if m == "DELETE"]


# ------------------------------------------------------------------------------ must-hold 7


def findings(report: RepairReport) -> list[tuple[str, str, str | None]]:
    return sorted((f.finding, f.region, f.backup_id) for f in report.findings)


async def test_a_region_that_goes_back_in_time_is_flagged_and_never_copied_from(
    world: World,
) -> None:
    env, a, b = world.env, world.raw["a"], world.raw["b"]
    first = world.backup("p1/files")
    snapshot_a = a.snapshot()  # what an attacker keeps, to put back later
    second = world.backup("p1/files")
    # Every region holds the sealed record of the newest backup, bound to its key.
    cfg = load_config(env.config_path)
    async with AsyncExitStack() as stack:
        regions = await open_regions(stack, cfg, [])
        heads, problems = await read_heads(P1F, regions, world.keyring)
    assert problems == {} and {h.region for h in heads} == {"a", "b"}
    assert {h.newest.backup_id for h in heads} == {second}
    assert all(sorted(h.regions) == ["a", "b"] for h in heads)
    # Region a is put back as it was after the first backup (its record too), and the only
    # other copy of the first backup is lost from b.
    for key in set(a.list_keys()) - set(snapshot_a):
        a.delete(key)
    for key, data in snapshot_a.items():
        a.write(key, data)
    for key in b.list_keys(P1F.backup_prefix(first)):
        b.delete(key)

    metrics = Metrics()
    report = await run_repair(world, metrics=metrics)
    assert ("rollback", "a", second) in findings(report)
    value = metrics.registry.get_sample_value
    labels = {"plan": "p1", "region": "a"}
    assert value("drd_integrity_findings", {**labels, "finding": "rollback"}) == 1
    assert value("drd_integrity_findings", {**labels, "region": "b", "finding": "rollback"}) == 0
    # a is repaired from b, and never used as a source: the first backup stays missing in b.
    assert [(c.backup_id, c.region) for c in report.repaired] == [(second, "a")]
    assert [(c.backup_id, c.region) for c in report.failed] == [(first, "b")]
    assert b.list_keys(P1F.backup_prefix(first)) == []

    # Once a holds the newest backup again, it is trusted again.
    report = await run_repair(world, metrics=metrics)
    assert findings(report) == []
    assert value("drd_integrity_findings", {**labels, "finding": "rollback"}) == 0
    assert [(c.backup_id, c.region) for c in report.repaired] == [(first, "b")]

    # Without this host's state, the other region's sealed record still tells.
    for key in set(a.list_keys()) - set(snapshot_a):
        a.delete(key)
    for key, data in snapshot_a.items():
        a.write(key, data)
    report = await run_repair(world, memory=HeadMemory(world.tmp / "fresh-state"))
    (rollback,) = [f for f in report.findings if f.finding == "rollback"]
    assert rollback.region == "a" and "region b's record says it was committed there" in str(
        rollback
    )
    # A forged record is a finding of its own.
    a.write(head_key(P1F), a.read(head_key(P1F)).replace(b'"regions"', b'"Regions"'))
    report = await run_repair(world)
    assert ("invalid_record", "a", None) in findings(report)


async def test_copies_that_disagree_are_flagged_and_never_spread(world: World) -> None:
    """Two different manifests for one id, both sealed with drd's key: a key was misused. The
    backup is not copied anywhere, and every region holding one is flagged."""
    a, b = world.raw["a"], world.raw["b"]
    backup_id = world.backup("p1/files")
    raw = a.read(P1F.manifest_key(backup_id))
    manifest = Manifest.open(world.keyring, raw, "a", P1F, backup_id)
    other = crypto.seal_manifest(
        world.keyring,
        {**asdict(manifest.public), "completed_at": "2030-01-01T00:00:00+00:00"},
        asdict(manifest.body),
        location=P1F.manifest_key(backup_id),
    )
    b.write(P1F.manifest_key(backup_id), other)
    report = await run_repair(world)
    assert findings(report) == [
        ("disagreement", "a", backup_id),
        ("disagreement", "b", backup_id),
    ]
    assert f"p1/files@{backup_id}" in report.untrusted
    assert report.repaired == report.failed == []
    assert b.read(P1F.manifest_key(backup_id)) == other  # nothing overwritten either


# ------------------------------------------------------------------------------ must-hold 8


async def test_a_future_dated_backup_is_flagged_never_spread_and_aged_from_first_sight(
    world: World,
) -> None:
    """A backup dated 30 days ahead (made by a host whose clock was wrong, or planted by
    someone who held the key): an integrity finding, never copied to other regions, and
    destroyed 14 days after drd first saw it, never kept for its id's sake."""
    from drd.pipeline.backup import run_backup
    from drd.retention.sweep import RetentionMemory, sweep
    from drd.strategies import get_strategy

    cfg = load_config(world.env.config_path)
    now = datetime.now(UTC)
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        source = cfg.plan("p1").source("files")
        future = await run_backup(
            P1F,
            get_strategy("files")(source),
            [regions["a"]],
            world.keyring,
            min_copies=1,
            clock=lambda: now + timedelta(days=30),
        )
        metrics = Metrics()
        report = await repair(
            cfg.plan("p1"),
            regions,
            world.keyring,
            now=now,
            memory=HeadMemory(cfg.state_dir),
            metrics=metrics,
        )
        assert ("future_dated", "a", future.backup_id) in findings(report)
        assert "in the future" in report.untrusted[f"p1/files@{future.backup_id}"]
        assert report.repaired == []
        value = metrics.registry.get_sample_value(
            "drd_integrity_findings", {"plan": "p1", "region": "a", "finding": "future_dated"}
        )
        assert value == 1
        assert world.raw["b"].list_keys(P1F.backup_prefix(future.backup_id)) == []

        memory = RetentionMemory(cfg.state_dir / "retention.json")
        kept = await sweep(cfg.plan("p1"), regions, now=now, memory=memory)
        (reason,) = [r for k, r in kept.decision.reasons.items() if k[1] == future.backup_id]
        assert "IN THE FUTURE (integrity finding" in reason and "destroyed in 14d" in reason
        # A restart keeps when it was first seen: 14 days later it is destroyed.
        memory = RetentionMemory(cfg.state_dir / "retention.json")
        later = await sweep(cfg.plan("p1"), regions, now=now + timedelta(days=14), memory=memory)
        assert future.backup_id in {b.backup_id for b in later.decision.destroy}
        assert world.raw["a"].list_keys(P1F.backup_prefix(future.backup_id)) == []


# ------------------------------------------------------------------------------ must-hold 10

GCS_REFUSAL = json.dumps(
    {
        "error": {
            "code": 400,
            "message": 'Provided CRC32C "AAAAAA==" doesn\'t match calculated CRC32C "mnG7TA==".',
            "errors": [{"domain": "global", "reason": "invalid"}],
        }
    }
)


def final_chunk(method: str, target: str, headers: dict[str, str]) -> bool:
    """The finalizing chunk of a resumable upload: it carries the total and the checksum."""
    span = headers.get("Content-Range", "")
    return "upload_id=" in target and "X-Goog-Hash" in headers and not span.endswith("/*")


async def test_a_checksum_gcs_refuses_at_finalize_is_transient_and_retried(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    """Real GCS answers a finalizing chunk whose X-Goog-Hash does not match what arrived with
    HTTP 400 (the emulators do not check it: a proxy answers as GCS does). That is damage on
    the way, not a refusal: a whole-object put uploads again, a streamed upload fails as
    transient, and the daemon's retry of the backup succeeds."""
    from google.auth.credentials import AnonymousCredentials

    from drd.daemon.service import Daemon, is_retryable
    from drd.errors import ChecksumMismatch, NotEnoughCopies, TransientStorageError
    from drd.pipeline.backup import run_backup
    from drd.storage.gcs import GCSStorage
    from drd.strategies import get_strategy

    env = DrdEnv(tmp_path)
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(os.urandom(300_000))
    with GcsProxy(servers[0].endpoint) as pa, GcsProxy(servers[1].endpoint) as pb:
        env.add_gcs_region("a", servers[0], "drd-a", endpoint=pa.endpoint)
        env.add_gcs_region("b", servers[1], "drd-b", endpoint=pb.endpoint)
        env.add_plan("p1", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
        env.daemon = {"retries": 2, "retry_wait": "1s"}
        env.write()
        storage = GCSStorage(
            "a",
            "drd-a",
            "direct",
            project="test",
            endpoint=pa.endpoint,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            chunk_size=256 * 1024,
            timeout=5,
            retry_deadline=2,
        )
        try:
            pa.fail("PUT", "upload_id=", 400, body=GCS_REFUSAL, times=1, when=final_chunk)
            await storage.put("k", b"manifest bytes")
            assert await storage.get("k") == b"manifest bytes"
            assert len(pa.hits("PUT", "upload_id=")) >= 2 and pa.rules[0].hits == 1

            pa.fail("PUT", "upload_id=", 400, body=GCS_REFUSAL, times=1, when=final_chunk)
            writer = await storage.open_writer("streamed")
            await writer.write(os.urandom(600_000))
            with pytest.raises(ChecksumMismatch) as refused:
                await writer.commit()
            await writer.abort()
            assert isinstance(refused.value, TransientStorageError)
            assert "damaged on the way" in str(refused.value)
        finally:
            await storage.close()

        cfg = load_config(env.config_path)
        async with AsyncExitStack() as stack:
            regions = {s.name: s for s in await open_regions(stack, cfg, [])}
            source = cfg.plan("p1").source("files")
            pb.fail("PUT", "upload_id=", 400, body=GCS_REFUSAL, times=1, when=final_chunk)
            with pytest.raises(NotEnoughCopies) as failed:
                await run_backup(
                    P1F,
                    get_strategy("files")(source),
                    list(regions.values()),
                    world_keyring(env),
                    min_copies=2,
                )
            assert failed.value.transient and is_retryable(failed.value)
            assert "refused the upload's checksum" in str(failed.value)

            # The daemon retries the job: the second attempt commits in both regions.
            pb.fail("PUT", "upload_id=", 400, body=GCS_REFUSAL, times=1, when=final_chunk)
            daemon = Daemon(cfg, world_keyring(env), regions)
            try:
                result = await daemon._backup_with_retries(daemon.sources[P1F])
            finally:
                daemon.history.close()
            assert sorted(result.committed_regions) == ["a", "b"]
            assert pb.rules[-1].hits == 1


def world_keyring(env: DrdEnv) -> crypto.Keyring:
    return crypto.Keyring.parse(env.key, "test")


# ------------------------------------------------------------------------------ must-hold 6


def test_drd_check_read_data_finds_a_same_size_bit_flip_and_replaces_it(world: World) -> None:
    env, a, b = world.env, world.raw["a"], world.raw["b"]
    backup_id = world.backup("p1/files")
    key = P1F.data_key(backup_id)
    good = b.read(key)
    a.flip(key)
    assert len(a.read(key)) == len(good)
    b_before = b.snapshot()
    # Sizes and manifests are all right: only reading the data can tell.
    proc = env.ok("check", "p1")
    assert "check: ok" in proc.stdout
    proc = env.run("check", "p1", "--read-data")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert f"DAMAGED region a: p1/files@{backup_id}: region a: {key} does not match" in proc.stdout
    assert f"REPLACED region a: p1/files@{backup_id} (replaced from region b)" in proc.stdout
    assert "check: FAILED (1 problem(s))" in proc.stdout
    assert a.read(key) == good and b.snapshot() == b_before
    proc = env.ok("check", "p1", "--read-data")
    assert "read 2 data objects" in proc.stdout and "check: ok" in proc.stdout
    # The whole config at once, and a forged manifest found without reading data.
    forge(a, P1F.manifest_key(backup_id))
    proc = env.run("check")
    assert proc.returncode == 5
    assert f"UNUSABLE region a: p1/files@{backup_id}:" in proc.stdout
    assert "plan p2:" in proc.stdout and f"REPAIRED region a: p1/files@{backup_id}" in proc.stdout


async def test_the_daemon_scrubs_within_its_budget_and_replaces_damaged_copies(
    world: World,
) -> None:
    from drd.daemon.scrub_loop import ScrubLoop
    from drd.runtime import Services

    env, a = world.env, world.raw["a"]
    ids = [world.backup("p1/files") for _ in range(3)]
    size = len(a.read(P1F.data_key(ids[0])))
    # Three backups in two regions: six copies; the budget reads about two per hour.
    env.daemon = {"scrub": {"bytes_per_hour": 2 * size}}
    cfg = load_config(env.write())
    a.flip(P1F.data_key(ids[1]))
    now = [datetime.now(UTC) + timedelta(days=4)]  # past half the 7-day period: all due
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        regions = {s.name: s for s in await open_regions(stack, cfg, [])}
        services = Services(
            cfg=cfg, regions=regions, keyring=world.keyring, metrics=metrics, clock=lambda: now[0]
        )
        loop = ScrubLoop(services)
        checked: list[tuple[str, str]] = []
        rounds = 0
        while len(checked) < 6 and rounds < 10:
            done = await loop.run_once()
            report = next(r for r in done if r.plan == "p1")
            # Never more than the budget: at most one copy past it (read once it is full).
            assert len(report.checked) <= 3
            checked += [(c.backup_id, c.region) for c in report.checked]
            now[0] += timedelta(hours=1)
            rounds += 1
    assert sorted(checked) == sorted((i, r) for i in ids for r in ("a", "b"))
    assert rounds >= 3  # the cap spread the reads over several rounds
    value = metrics.registry.get_sample_value
    assert value("drd_copies_damaged_total", {"plan": "p1", "region": "a"}) == 1
    assert value("drd_copies_damaged_total", {"plan": "p1", "region": "b"}) == 0
    assert a.read(P1F.data_key(ids[1])) == world.raw["b"].read(P1F.data_key(ids[1]))
    assert value("drd_scrub_period_seconds", {}) == 7 * 86400
    stamp = value(
        "drd_scrub_oldest_verified_timestamp_seconds",
        {"plan": "p1", "source": "files", "region": "b"},
    )
    assert stamp is not None and stamp >= (now[0] - timedelta(hours=rounds + 1)).timestamp()
    assert value("drd_scrub_read_bytes_total", {"region": "a"}) >= 2 * size


# ------------------------------------------------------------------------------ must-hold 9


async def test_one_regions_deletion_settings_only_move_that_regions_deletion(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    """fake-gcs-server has no soft delete: a proxy answers the bucket's metadata as real GCS
    does for a bucket keeping deleted objects 13.5 days. That region deletes at the 1-day
    minimum and fails `drd doctor` and /readyz, loudly; the other region keeps its 14 days."""
    from aiohttp.test_utils import TestClient, TestServer

    from drd.daemon.service import Daemon
    from drd.pipeline.backup import run_backup
    from drd.server.app import make_app
    from drd.strategies import get_strategy

    env = DrdEnv(tmp_path)
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("data\n")
    soft = {"retentionDurationSeconds": str(13 * 86400 + 12 * 3600)}
    bucket = {"kind": "storage#bucket", "name": "drd-b", "softDeletePolicy": soft}
    with GcsProxy(servers[0].endpoint) as pa, GcsProxy(servers[1].endpoint) as pb:
        env.add_gcs_region("a", servers[0], "drd-a", endpoint=pa.endpoint)
        env.add_gcs_region("b", servers[1], "drd-b", endpoint=pb.endpoint)
        env.add_plan("p1", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
        env.write()
        pb.fail("GET", r"^/storage/v1/b/drd-b(\?|$)", 200, body=json.dumps(bucket))

        doctor = env.run("doctor")
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert "region b: soft delete 13d12h" in doctor.stdout
        assert "earlier than the 1d minimum" in doctor.stdout
        assert (
            "plan p1: max_age 14d: backups are deleted at age 14d in region(s) a; "
            "at age 1d in region(s) b"
        ) in doctor.stdout
        assert "retention: FAILED" in doctor.stdout

        cfg = load_config(env.config_path)
        keyring = world_keyring(env)
        async with AsyncExitStack() as stack:
            regions = {s.name: s for s in await open_regions(stack, cfg, [])}
            source = cfg.plan("p1").source("files")
            two_days = await run_backup(
                P1F,
                get_strategy("files")(source),
                list(regions.values()),
                keyring,
                min_copies=2,
                clock=lambda: datetime.now(UTC) - timedelta(days=2),
            )
            daemon = Daemon(cfg, keyring, regions)
            try:
                await daemon.load_state()
                daemon.sources[P1F].next_due = datetime.now(UTC) + timedelta(days=1)
                (report,) = await daemon.retention.run_once()
                assert report.destroy_ages == {"a": timedelta(days=14), "b": timedelta(days=1)}
                assert list(daemon.retention.problems()) == ["b"]
                async with TestClient(TestServer(make_app(daemon))) as client:
                    response = await client.get("/readyz")
                    body = await response.json()
            finally:
                daemon.history.close()
        assert response.status == 503
        assert "cannot destroy backups in time in region(s): b" in body["reason"]
        assert "earlier than the 1d minimum" in body["checks"]["retention"]["b"]
        assert body["checks"]["retention"]["a"] == "ok"
        # Region a keeps the 2-day-old backup; b deleted its copy at its own minimum age, and
        # repair did not bring it back there.
        raw_a = RawRegion.gcs("a", servers[0], "drd-a")
        raw_b = RawRegion.gcs("b", servers[1], "drd-b")
        assert raw_a.list_keys(P1F.backup_prefix(two_days.backup_id))
        assert raw_b.list_keys(P1F.backup_prefix(two_days.backup_id)) == []
