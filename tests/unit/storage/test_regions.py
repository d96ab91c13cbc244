"""Region specs from --storage arguments, and Google credentials that are always explicit."""

from __future__ import annotations

from pathlib import Path

import pytest

from drd.errors import ConfigError, UsageError
from drd.storage.google_auth import is_loopback_url
from drd.storage.regions import RegionSpec, google_credentials, parse_storage_arg


@pytest.mark.parametrize(
    ("arg", "name", "url", "endpoint", "creds"),
    [
        ("file:/srv/drd/a", "a", "file:/srv/drd/a", None, {}),
        ("ew1=file:/srv/drd/a", "ew1", "file:/srv/drd/a", None, {}),
        (
            "ew1=gs://bucket/prefix?endpoint=http://127.0.0.1:4443&credentials=anonymous",
            "ew1",
            "gs://bucket/prefix",
            "http://127.0.0.1:4443",
            {"source": "anonymous", "name": ""},
        ),
        (
            "gs://acme-drd/prod?credentials=env:GCS_SA",
            "acme-drd",
            "gs://acme-drd/prod",
            None,
            {"source": "env", "name": "GCS_SA"},
        ),
    ],
)
def test_parse_storage_arg(
    arg: str, name: str, url: str, endpoint: str | None, creds: dict[str, str]
) -> None:
    spec = parse_storage_arg(arg)
    assert (spec.name, spec.url, spec.endpoint, spec.credentials) == (name, url, endpoint, creds)


def test_parse_storage_arg_rejects_unknown_schemes() -> None:
    with pytest.raises(UsageError, match="expected file:PATH"):
        parse_storage_arg("s3://bucket")


def test_anonymous_credentials_only_for_a_loopback_emulator() -> None:
    assert is_loopback_url("http://127.0.0.1:4443") and is_loopback_url("http://localhost:1")
    assert not is_loopback_url("https://storage.example.com")
    spec = RegionSpec(
        "r", "gs://b", endpoint="https://storage.example.com", credentials={"source": "anonymous"}
    )
    with pytest.raises(ConfigError, match="loopback"):
        google_credentials(spec)
    with pytest.raises(ConfigError, match="required"):
        google_credentials(RegionSpec("r", "gs://b"))


def test_bad_service_account_json_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCS_SA", '{"type": "service_account", "private_key": "SECRETPEM"}')
    spec = RegionSpec("r", "gs://b", credentials={"source": "env", "name": "GCS_SA"})
    with pytest.raises(ConfigError) as err:
        google_credentials(spec)
    assert "SECRETPEM" not in str(err.value) and "service-account" in str(err.value)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "sa.json").write_text("not json SECRETPEM")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    spec = RegionSpec("r", "gs://b", credentials={"source": "credential", "name": "sa.json"})
    with pytest.raises(ConfigError) as err:
        google_credentials(spec)
    assert "SECRETPEM" not in str(err.value)
