"""drd.keys: delivering the keyring from the environment, a systemd credential or stdin."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from drd import keys
from drd.crypto import Keyring, generate_key
from drd.errors import KeyringError
from drd.keys import (
    load_keyring,
    load_keyring_from_credential,
    load_keyring_from_env,
    load_keyring_from_stdin,
)


def key_id(key_string: str) -> str:
    return key_string.split(":")[1]


def assert_clean(message: str, *key_strings: str) -> None:
    for k in key_strings:
        assert k not in message
        assert k.split(":")[-1] not in message


def broken(key_string: str) -> str:
    """The same key with one character of the secret mistyped."""
    ch = key_string[40]
    return key_string[:40] + ("x" if ch != "x" else "y") + key_string[41:]


# --------------------------------------------------------------------------- environment


def test_env_loads_and_scrubs_the_variable() -> None:
    k1, k2 = generate_key(), generate_key()
    environ = {"DRD_KEYS": f"{k1},{k2}", "OTHER": "x"}
    ring = load_keyring_from_env("DRD_KEYS", environ)
    assert ring.key_ids == (key_id(k1), key_id(k2))
    assert environ == {"OTHER": "x"}  # child processes will not inherit the keys


def test_env_without_scrub_keeps_the_variable() -> None:
    k = generate_key()
    environ = {"DRD_KEYS": k}
    load_keyring_from_env("DRD_KEYS", environ, scrub=False)
    assert environ == {"DRD_KEYS": k}


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    k = generate_key()
    monkeypatch.setenv("DRD_TEST_KEYS", k)
    assert load_keyring_from_env("DRD_TEST_KEYS").primary.key_id == key_id(k)
    assert "DRD_TEST_KEYS" not in os.environ
    with pytest.raises(
        KeyringError, match="DRD_TEST_KEYS is not set: this process already read it"
    ):
        load_keyring_from_env("DRD_TEST_KEYS")


def test_env_missing_or_empty() -> None:
    with pytest.raises(KeyringError, match="environment variable DRD_KEYS is not set"):
        load_keyring_from_env("DRD_KEYS", {})
    with pytest.raises(KeyringError, match="environment variable DRD_KEYS: no keys found"):
        load_keyring_from_env("DRD_KEYS", {"DRD_KEYS": " "})


def test_env_malformed_is_scrubbed_and_not_echoed() -> None:
    good, bad = generate_key(), broken(generate_key())
    environ = {"DRD_KEYS": f"{good}\n{bad}"}
    with pytest.raises(KeyringError, match="environment variable DRD_KEYS: key #2") as info:
        load_keyring_from_env("DRD_KEYS", environ)
    assert_clean(str(info.value), good, bad)
    assert environ == {}


# ----------------------------------------------------------------------- systemd credential


def write_credential(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o400)
    return path


def test_credential_from_explicit_dir(tmp_path: Path) -> None:
    k1, k2 = generate_key(), generate_key()
    write_credential(tmp_path, "drd-keys", f"{k1}\n{k2}\n")
    ring = load_keyring_from_credential("drd-keys", str(tmp_path))
    assert ring.key_ids == (key_id(k1), key_id(k2))


def test_credential_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = generate_key()
    write_credential(tmp_path, "drd-keys", k)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_keyring_from_credential("drd-keys").primary.key_id == key_id(k)
    assert (tmp_path / "drd-keys").read_text() == k  # read, never rewritten or removed


def test_credential_without_credentials_directory() -> None:
    with pytest.raises(KeyringError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        load_keyring_from_credential("drd-keys")


def test_credential_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="credential 'drd-keys' not found in"):
        load_keyring_from_credential("drd-keys", str(tmp_path))


@pytest.mark.parametrize("name", ["", ".", "..", "../etc/passwd", "a/b", "/etc/passwd", "a\0b"])
def test_credential_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyringError, match="invalid credential name"):
        load_keyring_from_credential(name, str(tmp_path))


def test_credential_symlink_is_refused(tmp_path: Path) -> None:
    target = write_credential(tmp_path, "real", generate_key())
    (tmp_path / "drd-keys").symlink_to(target)
    with pytest.raises(KeyringError, match="cannot open credential 'drd-keys'"):
        load_keyring_from_credential("drd-keys", str(tmp_path))


def test_credential_must_be_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(KeyringError, match="not a regular file"):
        load_keyring_from_credential("dir", str(tmp_path))
    os.mkfifo(tmp_path / "fifo")  # must not block start-up
    with pytest.raises(KeyringError, match="not a regular file"):
        load_keyring_from_credential("fifo", str(tmp_path))


def test_credential_malformed_content(tmp_path: Path) -> None:
    bad = broken(generate_key())
    write_credential(tmp_path, "drd-keys", bad)
    with pytest.raises(KeyringError, match="credential 'drd-keys': key #1 is malformed") as info:
        load_keyring_from_credential("drd-keys", str(tmp_path))
    assert_clean(str(info.value), bad)
    write_credential(tmp_path, "binary", b"\xff\xfe" + bad.encode())
    with pytest.raises(KeyringError, match="credential 'binary' is not UTF-8 text") as info:
        load_keyring_from_credential("binary", str(tmp_path))
    assert_clean(str(info.value), bad)
    write_credential(tmp_path, "huge", "#" * (keys.MAX_KEYRING_TEXT + 1))
    with pytest.raises(KeyringError, match="larger than"):
        load_keyring_from_credential("huge", str(tmp_path))


def test_credential_unreadable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = write_credential(tmp_path, "drd-keys", generate_key())
    path.chmod(0)
    with pytest.raises(KeyringError, match="cannot open credential 'drd-keys'"):
        load_keyring_from_credential("drd-keys", str(tmp_path))


# -------------------------------------------------------------------------------------- stdin


def test_stdin() -> None:
    k1, k2 = generate_key(), generate_key()
    ring = load_keyring_from_stdin(io.StringIO(f"{k1} {k2}\n"))
    assert ring.key_ids == (key_id(k1), key_id(k2))


def test_stdin_empty_or_malformed() -> None:
    with pytest.raises(KeyringError, match="standard input: no keys found"):
        load_keyring_from_stdin(io.StringIO(""))
    bad = broken(generate_key())
    with pytest.raises(KeyringError, match="standard input: key #1 is malformed") as info:
        load_keyring_from_stdin(io.StringIO(bad))
    assert_clean(str(info.value), bad)
    with pytest.raises(KeyringError, match="more than"):
        load_keyring_from_stdin(io.StringIO(" " * (keys.MAX_KEYRING_TEXT + 1)))


def test_stdin_not_text() -> None:
    stream = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\xfd"), encoding="utf-8")
    with pytest.raises(KeyringError, match="standard input is not UTF-8 text"):
        load_keyring_from_stdin(stream)
    closed = io.StringIO("x")
    closed.close()
    with pytest.raises(KeyringError, match="cannot read keys from standard input"):
        load_keyring_from_stdin(closed)


# ----------------------------------------------------------------------------------- dispatch


def test_load_keyring_env_default_name(monkeypatch: pytest.MonkeyPatch) -> None:
    k = generate_key()
    monkeypatch.setenv("DRD_KEYS", k)
    assert load_keyring("env", None).primary.key_id == key_id(k)
    monkeypatch.setenv("DRD_OTHER_KEYS", k)
    assert load_keyring("env", "DRD_OTHER_KEYS").primary.key_id == key_id(k)


def test_load_keyring_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = generate_key(), generate_key()
    write_credential(tmp_path, keys.DEFAULT_CREDENTIAL, k1)
    write_credential(tmp_path, "custom", k2)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_keyring("credential", None).primary.key_id == key_id(k1)
    assert load_keyring("credential", "custom").primary.key_id == key_id(k2)


def test_load_keyring_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    k = generate_key()
    monkeypatch.setattr(sys, "stdin", io.StringIO(k + "\n"))
    assert load_keyring("stdin", None).primary.key_id == key_id(k)
    with pytest.raises(KeyringError, match="takes no name"):
        load_keyring("stdin", "x")


def test_load_keyring_errors() -> None:
    with pytest.raises(KeyringError, match="unknown key source 'file'"):
        load_keyring("file", "/etc/drd/keys")
    with pytest.raises(KeyringError, match="environment variable DRD_KEYS is not set"):
        load_keyring("env", None)


def test_reexports() -> None:
    assert keys.Keyring is Keyring and keys.generate_key is generate_key
