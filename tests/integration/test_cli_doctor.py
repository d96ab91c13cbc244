"""`drd doctor` as a process against real regions: a missing directory, a read-only filesystem
(a tmpfs this test mounts read-only), and fake-gcs-server buckets. fake-gcs-server reports
every bucket as STANDARD (it ignores the class and Autoclass a bucket is created with) and has
no soft delete or retention policy, so a proxy answers the bucket's `buckets.get` the way real
GCS does where a test needs another answer (tests/unit/retention/test_doctor.py covers every
class and Autoclass from recorded bucket resources)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.gcsproxy import GcsProxy
from tests.support.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.integration


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "ro", "size=1m,mode=0700,ro") as mount:
        yield mount


def files_env(tmp_path: Path) -> DrdEnv:
    env = DrdEnv(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("data\n")
    return env


def test_missing_and_read_only_local_regions_fail_the_doctor(
    tmp_path: Path, read_only_dir: Path
) -> None:
    env = files_env(tmp_path)
    env.add_local_region("a")
    env.regions.append({"name": "missing", "url": f"file:{tmp_path / 'not-mounted'}"})
    env.regions.append({"name": "ro", "url": f"file:{read_only_dir}"})
    env.add_plan("p", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
    env.write()

    doctor = env.run("doctor")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    out = doctor.stdout
    assert "region a: writable (write, read, delete: ok)" in out
    assert "region missing: NOT USABLE: cannot write the probe object" in out
    assert "not-mounted is not a directory" in out
    assert "region ro: NOT USABLE: cannot write the probe object" in out
    assert "Read-only file system" in out
    assert out.rstrip().endswith("regions: FAILED: not usable: missing, ro\ndoctor: FAILED")
    assert not (tmp_path / "not-mounted").exists()

    data = json.loads(env.run("doctor", "--json").stdout)
    assert {r["region"]: r["usable"] for r in data["regions"]} == {
        "a": True,
        "missing": False,
        "ro": False,
    }
    # The probe of the usable region left nothing behind.
    assert list((tmp_path / "regions" / "a").rglob("*")) == []


def test_gcs_regions_are_probed_and_their_class_and_settings_judged(
    tmp_path: Path, gcs_regions: StartRegions
) -> None:
    env = files_env(tmp_path)
    servers = gcs_regions(3, ["EUROPE-WEST1", "US-CENTRAL1", "ASIA-EAST1"])
    nearline = {"kind": "storage#bucket", "name": "drd-b", "storageClass": "NEARLINE"}
    with (
        GcsProxy(servers[1].endpoint) as pb,
        GcsProxy(servers[2].endpoint) as pc,
    ):
        env.add_gcs_region("a", servers[0], "drd-a")
        env.add_gcs_region("b", servers[1], "drd-b", endpoint=pb.endpoint)
        env.add_gcs_region("c", servers[2], "drd-c", endpoint=pc.endpoint)
        env.add_plan("p", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
        env.write()

        doctor = env.run("doctor")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        for name in "abc":
            assert f"region {name}: writable (write, read, delete: ok)" in doctor.stdout
        assert doctor.stdout.rstrip().endswith("doctor: ok")
        assert "region a: no soft delete, versioning off" in doctor.stdout
        assert "; storage class STANDARD" in doctor.stdout  # as the server reports it
        # The probes wrote, read and deleted through the real server.
        assert pb.hits("POST", r"/upload/storage/v1/b/drd-b/o") or pb.hits(
            "PUT", r"/upload/storage/v1/b/drd-b/o"
        )
        assert pb.hits("DELETE", r"/storage/v1/b/drd-b/o/drd/_doctor/probe-")

        pb.fail("GET", r"^/storage/v1/b/drd-b(\?|$)", 200, body=json.dumps(nearline))
        pc.fail("GET", r"^/storage/v1/b/drd-c(\?|$)", 403)
        doctor = env.run("doctor")
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        out = doctor.stdout
        assert "region b: error: the bucket's default storage class NEARLINE" in out
        assert "billed for 30d" in out
        assert "region c: no soft delete" not in out
        assert "error: deletion settings unknown (gs://drd-c: no permission" in out
        assert "retention: FAILED" in out and out.rstrip().endswith("doctor: FAILED")
        data = json.loads(env.run("doctor", "--json").stdout)
        assert data["ok"] is False and all(r["usable"] for r in data["regions"])
        (plan,) = data["plans"]
        assert [(f["region"], f["severity"]) for f in plan["storage_class_findings"]] == [
            ("b", "error")
        ]

        servers[0].stop()
        doctor = env.run("doctor")
        assert doctor.returncode == 1
        assert "region a: NOT USABLE: cannot write the probe object" in doctor.stdout
