"""Issue 14, points 2 and 5: the API over TLS with its certificate and key from systemd
credentials, and a listen address off loopback that must be acknowledged."""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drd.cli.main import main
from tests.support.drdenv import DrdEnv, free_port

pytestmark = pytest.mark.integration


def _self_signed(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drd test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700)
    (directory / "api-cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "api-key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "api-cert"


def _env(tmp_path: Path, port: int) -> DrdEnv:
    env = DrdEnv.files_plan(tmp_path, port=port)
    env.api = {"public_read": True, "tls": {"certificate": "api-cert", "key": "api-key"}}
    env.write()
    return env


def test_the_api_speaks_tls_with_credentials_from_systemd(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, port)
    creds = tmp_path / "credentials"
    cert = _self_signed(creds)
    log = open(tmp_path / "daemon.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(
        env.command("run"),
        env=env.env(CREDENTIALS_DIRECTORY=str(creds)),
        cwd=tmp_path,
        stdout=log,
        stderr=log,
    )
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/healthz", timeout=5, context=trusted
                ) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
                time.sleep(0.2)
        # Plain HTTP is not answered.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert "API on https://" in (tmp_path / "daemon.log").read_text()
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_a_bad_tls_credential_is_a_clear_start_error(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port())
    creds = tmp_path / "credentials"
    _self_signed(creds)
    (creds / "api-key").write_text("not a key\n")
    run = env.run("run", env=env.env(CREDENTIALS_DIRECTORY=str(creds)), timeout=60)
    assert run.returncode == 3, run.stderr
    assert "api.tls: credentials 'api-cert' and 'api-key' are not a PEM" in run.stderr
    assert "not a key" not in run.stderr
    run = env.run("run", env=env.env(CREDENTIALS_DIRECTORY=None), timeout=60)
    assert run.returncode == 3 and "$CREDENTIALS_DIRECTORY is not set" in run.stderr


@pytest.mark.parametrize(
    ("api", "needle"),
    [
        ({"listen": "0.0.0.0:9187"}, "off loopback and no token is configured"),
        (
            {
                "listen": "0.0.0.0:9187",
                "public_read": True,
                "tokens": [{"name": "x", "role": "viewer", "sha256": "a" * 64}],
            },
            "off loopback with public_read",
        ),
    ],
)
def test_listening_off_loopback_must_be_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], api: dict[str, object], needle: str
) -> None:
    env = _env(tmp_path, 0)
    text = env.config_path.read_text()
    import yaml

    config = yaml.safe_load(text)
    config["api"] = api
    env.config_path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(env.config_path), "validate"]) == 3
    err = capsys.readouterr().err
    assert needle in err and "drd.yaml" in err and "api" in err, err
    config["api"] = {**api, "exposed": True}
    env.config_path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(env.config_path), "validate"]) == 0
