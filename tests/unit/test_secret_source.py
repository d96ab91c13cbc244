"""Secrets out of reach (issue 14, point 1): a variable a secret was read from leaves this
process's environment, the kernel's copy of the environment block and every child's
environment; the process is non-dumpable with a core limit of 0; DSNs are shown redacted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from drd import secret_source
from drd.secret_source import child_environment, read_secret, redact_target


@pytest.fixture(autouse=True)
def _forget_taken() -> None:
    secret_source._taken.clear()


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_key_from_the_environment_leaves_proc_environ() -> None:
    from drd import crypto

    key = crypto.generate_key()
    env = {**os.environ, "DRD_KEYS": key, "DRD_OTHER": "kept-value"}
    run = _python(
        """
        from drd.keys import load_keyring_from_env
        load_keyring_from_env("DRD_KEYS")
        block = open("/proc/self/environ", "rb").read()
        import os
        print("key-in-block" if os.environ.get("X_KEY", "").encode() in block else "clean")
        print("other-kept" if b"DRD_OTHER=kept-value" in block else "other-lost")
        print("env-gone" if "DRD_KEYS" not in os.environ else "env-still-set")
        """,
        {**env, "X_KEY": key},
    )
    assert run.returncode == 0, run.stderr
    # X_KEY holds the same string and is not a secret variable: it proves the search works.
    assert run.stdout.split() == ["key-in-block", "other-kept", "env-gone"]
    run = _python(
        """
        from drd.keys import load_keyring_from_env
        load_keyring_from_env("DRD_KEYS")
        import sys
        block = open("/proc/self/environ", "rb").read()
        print("leak" if sys.argv and b"drdk1:" in block else "clean")
        """,
        env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["clean"]


def test_secret_variable_is_in_no_child_environment() -> None:
    env = {**os.environ, "GCS_SA_JSON": '{"private_key": "sekrit"}'}
    run = _python(
        """
        import subprocess
        from drd.secret_source import child_environment, read_secret
        assert read_secret("env", "GCS_SA_JSON", what="GCS credentials").startswith("{")
        # A second read (every job reads anew) still gets it, from memory.
        assert read_secret("env", "GCS_SA_JSON", what="GCS credentials").startswith("{")
        child = subprocess.run(["env"], env=child_environment(), capture_output=True, text=True)
        naive = subprocess.run(["env"], capture_output=True, text=True)
        block = open("/proc/self/environ", "rb").read()
        print("child-clean" if "sekrit" not in child.stdout else "child-leak")
        print("inherit-clean" if "sekrit" not in naive.stdout else "inherit-leak")
        print("block-clean" if b"sekrit" not in block else "block-leak")
        """,
        env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["child-clean", "inherit-clean", "block-clean"]


def test_child_environment_keeps_the_one_secret_the_child_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", "pw-one")
    monkeypatch.setenv("DRD_LOG_LEVEL", "debug")
    monkeypatch.setenv("HARMLESS", "1")
    assert read_secret("env", "APP_DB_PASSWORD", what="db password") == "pw-one"
    env = child_environment({"PGPASSWORD": "pw-one"})
    assert env["PGPASSWORD"] == "pw-one"
    assert "APP_DB_PASSWORD" not in env
    assert "DRD_LOG_LEVEL" not in env
    assert env["HARMLESS"] == "1"
    assert "PGUSER" not in child_environment(drop=["PGUSER"])


def test_a_variable_set_again_wins_over_the_kept_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATED", "old")
    assert read_secret("env", "ROTATED", what="x") == "old"
    monkeypatch.setenv("ROTATED", "new")
    assert read_secret("env", "ROTATED", what="x") == "new"


def test_postgres_and_command_check_children_get_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from drd.restore_tests.command import command_environment
    from drd.strategies.postgres_conn import _Conn

    monkeypatch.setenv("REGION_B_SA", "service-account-json")
    read_secret("env", "REGION_B_SA", what="GCS credentials of region b")
    pg_env = _Conn.parse("host=127.0.0.1 password=pgpw dbname=app").env()
    assert pg_env["PGPASSWORD"] == "pgpw"
    assert "REGION_B_SA" not in pg_env
    check_env = command_environment({"DRD_RESTORED_DSN": "host=x"})
    assert "REGION_B_SA" not in check_env
    assert check_env["DRD_RESTORED_DSN"] == "host=x"


def test_process_is_not_dumpable_and_has_no_core_limit_after_cli_start() -> None:
    run = _python(
        """
        import ctypes, resource
        from drd.cli.main import main
        assert main(["keygen", "--quiet"]) == 0
        libc = ctypes.CDLL(None)
        print(libc.prctl(3, 0, 0, 0, 0), *resource.getrlimit(resource.RLIMIT_CORE))
        """,
        dict(os.environ),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-3:] == ["0", "0", "0"]


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        ("host=db password=s3cret dbname=app", "host=db password=*** dbname=app"),
        ("host=db password='a b\\'c' user=x", "host=db password=*** user=x"),
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("mysql://root@db/app?password=env:DB_PW", "mysql://root@db/app?password=env:DB_PW"),
        ("host=db password=credential:db-pw", "host=db password=credential:db-pw"),
        ("/srv/restore/here", "/srv/restore/here"),
    ],
)
def test_targets_are_shown_without_passwords(shown: str, expected: str) -> None:
    assert redact_target(shown) == expected
