"""Issue 15: every shipped plan example (plans/examples/*.yaml) passes its restore test as
shipped, against the real PostgreSQL, fake-gcs-server and the local Cloud SQL Admin API; only
where the data is changes (a DSN, a path, a bucket's endpoint and credentials). Every check of
each report passes, the built-in ones and the plan's own, and each says what it covered.
(shop-mysql.yaml: tests/integration/test_mysql_restore_tests.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.cloudsql_fake import StartCloudSql
from tests.integration.strategies.test_gcs_bucket import OBJECTS, put_objects
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.pg import PgDatabaseFactory, populate_rich_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "plans" / "examples"
TESTED_ELSEWHERE = {"shop-mysql.yaml", "drd-gcs.yaml"}  # drd-gcs.yaml is a config, not a plan


def example(name: str) -> dict[str, Any]:
    plan = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(plan, dict)
    return plan


def env_for(tmp_path: Path, plan: dict[str, Any]) -> DrdEnv:
    env = DrdEnv(tmp_path)
    for region in plan["storage"]["regions"]:
        env.add_local_region(region)
    env.plans[plan["name"]] = plan
    env.write()
    return env


def passes(env: DrdEnv, plan: dict[str, Any], **run: Any) -> list[dict[str, Any]]:
    env.ok("validate", **run)
    env.ok("backup", plan["name"], **run)
    proc = env.ok("restore-test", plan["name"], "--json", **run)
    reports: list[dict[str, Any]] = json.loads(proc.stdout)["reports"]
    assert reports
    for report in reports:
        assert report["result"] == "passed", report
        for check in report["checks"]:
            assert check["status"] == "passed", check
            if check["kind"] not in ("backup_status", "command", "sql", "freshness"):
                assert check.get("coverage"), check
        assert not list((env.root / "state" / "scratch").glob("*.json"))
    return reports


def test_every_example_is_tested() -> None:
    here = {p.name for p in EXAMPLES.glob("*.yaml")} - TESTED_ELSEWHERE
    tested = {"billing-postgres.yaml", "assets-files.yaml", "media-gcs-bucket.yaml"}
    tested |= {"billing-cloudsql.yaml"}
    assert here == tested


BILLING = """
CREATE TABLE public.invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id bigint NOT NULL REFERENCES public.invoices (id),
    amount numeric(12, 2) NOT NULL
);
INSERT INTO public.invoices (customer, created_at)
    SELECT 'customer ' || g, now() - g * interval '1 second' FROM generate_series(1, 3000) g;
INSERT INTO public.ledger (invoice_id, amount) SELECT id, id * 1.25 FROM public.invoices;
"""


def test_billing_postgres(tmp_path: Path, pg_database_factory: PgDatabaseFactory) -> None:
    db = pg_database_factory("drdt_billing")
    populate_rich_database(db.dsn, rows=500)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(BILLING)
    plan = example("billing-postgres.yaml")
    (source,) = plan["sources"]
    source["dsn"] = db.dsn
    env = env_for(tmp_path, plan)
    shutil.copytree(EXAMPLES / "checks", env.root / "checks")
    reports = passes(env, plan)
    (report,) = reports
    names = [c["name"] for c in report["checks"]]
    for builtin in ("integrity", "row_counts", "schema", "sequences", "inventory", "content"):
        assert builtin in names
    assert {"invoices-exist", "ledger-balance"} <= set(names)
    assert report["scratch"]["kind"] == "ephemeral-postgres"


def test_assets_files(tmp_path: Path) -> None:
    tree = tmp_path / "srv" / "uploads"
    (tree / "2026" / "06").mkdir(parents=True)
    (tree / "2026" / "06" / "logo.png").write_bytes(b"\x89PNG" + bytes(5000))
    (tree / "README").write_text("uploads\n")
    (tree / "latest").symlink_to("2026/06/logo.png")
    plan = example("assets-files.yaml")
    (source,) = plan["sources"]
    source["path"] = str(tree)
    env = env_for(tmp_path / "drd", plan)
    (report,) = passes(env, plan)
    digests = next(c for c in report["checks"] if c["name"] == "file_digests")
    assert "mode" in digests["coverage"] and "link target" in digests["coverage"], digests


def test_media_gcs_bucket(tmp_path: Path, gcs_regions: StartRegions) -> None:
    (server,) = gcs_regions(1, ["MEDIA"])
    put_objects(server, "acme-media", "uploads/")
    plan = example("media-gcs-bucket.yaml")
    (source,) = plan["sources"]
    source.update(endpoint=server.endpoint, credentials={"source": "anonymous"})
    env = env_for(tmp_path, plan)
    (report,) = passes(env, plan)
    objects = next(c for c in report["checks"] if c["name"] == "objects")
    assert f"{len(OBJECTS)} objects" in objects["coverage"]


def test_billing_cloudsql(
    tmp_path: Path, gcs_regions: StartRegions, cloudsql_api: StartCloudSql
) -> None:
    plan = example("billing-cloudsql.yaml")
    (source,) = plan["sources"]
    (gcs,) = gcs_regions(1, ["STAGING"])
    gcs.create_bucket(source["staging"]["bucket"])
    api = cloudsql_api(gcs.endpoint)
    api.add_instance(source["project"], source["instance"])
    dsn = api.add_database(source["project"], source["instance"], source["database"])
    populate_rich_database(dsn, rows=400)
    anonymous = {"source": "anonymous"}
    source.update(endpoint=api.base_url, credentials=anonymous, poll_initial=0.05, poll_max=0.2)
    source["staging"].update(endpoint=gcs.endpoint, credentials=anonymous)
    env = env_for(tmp_path, plan)
    reports = passes(env, plan)
    assert {r["scratch"]["kind"] for r in reports} == {"cloudsql-scratch-project"}
