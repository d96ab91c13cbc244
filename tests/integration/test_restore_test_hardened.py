"""Issue 15 point 3: a restore test under the shipped unit's hardening (MemoryDenyWriteExecute,
reproduced with the MDWE prctl, tests/support/mdwe.py) on a table big enough that the built-in
row count would be JIT-compiled, passes; and the test proves it would fail without drd's
jit=off: inside the scratch server, while the restore test runs, a probe (a command check, so
a child of the hardened drd like the server itself) finds MDWE in force, `jit` off in the
server's configuration, the row count's planned cost above jit_above_cost, and the very same
count failing in a control session that turns JIT back on. (drd's own check sessions add
jit=off as well, restore_tests.databases.check_dsn: with the server setting alone removed the
probe fails; with both removed the built-in row count fails with `failed to look up symbol
"evalexpr_0_1"`, the issue's false alarm.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.support import mdwe
from tests.support.drdenv import DrdEnv
from tests.support.pg import PgDatabaseFactory

pytestmark = pytest.mark.integration

# A serial plan reaches jit_above_cost (100000) with ~6M int rows (a parallel one would need
# ~11M: it divides the per-row cost); the reloption travels with the dump.
ROWS = 6_500_000

PROBE = """
import ctypes, json, os, sys
import psycopg

out = {"mdwe": ctypes.CDLL(None).prctl(66, 0, 0, 0, 0)}
dsn = os.environ["DRD_RESTORED_DSN"]
with psycopg.connect(dsn, autocommit=True) as db:
    out["jit"] = db.execute("SELECT current_setting('jit')").fetchone()[0]
    out["jit_source"] = db.execute(
        "SELECT source FROM pg_settings WHERE name = 'jit'").fetchone()[0]
    out["jit_above_cost"] = float(db.execute("SHOW jit_above_cost").fetchone()[0])
    plan = db.execute("EXPLAIN (FORMAT JSON) SELECT count(*) FROM public.big").fetchone()[0]
    out["cost"] = plan[0]["Plan"]["Total Cost"]
with psycopg.connect(dsn, autocommit=True) as db:
    db.execute("SET jit = on")
    try:
        out["control"] = db.execute("SELECT count(*) FROM public.big").fetchone()[0]
    except psycopg.Error as exc:
        out["control_error"] = str(exc).strip()
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
ok = (out["mdwe"] == 1 and out["jit"] == "off" and out["cost"] > out["jit_above_cost"]
      and "control_error" in out)
sys.exit(0 if ok else 1)
"""


def test_restore_test_of_a_big_table_passes_under_memory_deny_write_execute(
    tmp_path: Path, pg_database_factory: PgDatabaseFactory
) -> None:
    if not mdwe.supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or newer)")
    source = pg_database_factory("drdt_jit")
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int) WITH (parallel_workers = 0)")
        conn.execute(f"INSERT INTO big SELECT generate_series(1, {ROWS})")
    probe = tmp_path / "jit_probe.py"
    probe.write_text(PROBE)
    found = tmp_path / "probe.json"
    env = DrdEnv(tmp_path / "drd")
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "big",
        [{"name": "db", "kind": "postgres", "dsn": source.dsn}],
        restore_test={
            "checks": {
                "db": [{"name": "jit-probe", "command": [sys.executable, str(probe), str(found)]}]
            }
        },
    )
    env.write()
    env.ok("backup", "big", timeout=600)

    hardened = [
        sys.executable,
        mdwe.__file__,
        *env.command("restore-test", "big", "--region", "a", "--json"),
    ]
    proc = subprocess.run(
        hardened, env=env.env(), cwd=env.root, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode != mdwe.NO_MDWE, proc.stderr
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    (report,) = json.loads(proc.stdout)["reports"]
    assert report["result"] == "passed", report
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["row_counts"]["status"] == "passed"
    assert f"{ROWS} rows" in checks["row_counts"]["actual"]
    assert checks["jit-probe"]["status"] == "passed", checks["jit-probe"]

    probed = json.loads(found.read_text())
    assert probed["mdwe"] == 1  # the restore test (and so its server) ran hardened
    assert probed["jit"] == "off" and probed["jit_source"] == "command line"
    assert probed["cost"] > probed["jit_above_cost"] == 100000  # the count would be compiled
    # ... and compiling it fails under MDWE: exactly what jit=off prevents
    assert "failed to look up symbol" in probed["control_error"], probed
