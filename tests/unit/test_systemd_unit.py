"""systemd/drd.service: systemd accepts it, it is sandboxed as documented, and its ExecStart is
a command line drd's own parser accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from drd.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "drd.service"
SYSUSERS = REPO / "systemd" / "drd.sysusers.conf"
README = REPO / "systemd" / "README.md"

# The largest daemon.shutdown_grace the unit supports, and how long drd then waits for cancelled
# jobs (drd.daemon.service.Daemon.shutdown). TimeoutStopSec must cover both, with a margin.
MAX_GRACE_SECONDS = 120
CANCEL_WAIT_SECONDS = 30

# Lines systemd-analyze verify prints that mean the unit itself is wrong.
VERIFY_ERRORS = re.compile(
    r"unknown (key|section|lvalue)|failed to parse|invalid|bad|not executable"
    r"|missing|ignoring|unsupported|deprecated|neither|assignment outside",
    re.I,
)
# ... and those that only reflect this test machine (no drd user here, no systemd as PID 1).
VERIFY_ENVIRONMENT = re.compile(
    r"(user|group).*(not exist|not found|resolve|unknown)|failed to (connect|look up)"
    r"|system has not been booted|/run/systemd",
    re.I,
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (a key may repeat). Comments are skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {raw}"
        assert "=" in line, f"not an assignment: {raw}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit_text() -> str:
    return UNIT.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def service(unit_text: str) -> dict[str, list[str]]:
    return parse_unit(unit_text)["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


# ----------------------------------------------------------------------------- contents


SANDBOX = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    # No core file of a process that holds the key-encryption key (issue 14).
    "LimitCORE": "0",
    "LimitNOFILE": "65536",
}


@pytest.mark.parametrize("key", sorted(SANDBOX))
def test_sandbox_directive(service: dict[str, list[str]], key: str) -> None:
    assert one(service, key) == SANDBOX[key]


def test_network_and_syscalls_are_restricted(service: dict[str, list[str]]) -> None:
    families = one(service, "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    filters = service["SystemCallFilter"]
    assert filters[0] == "@system-service", "start from the @system-service allow list"
    assert all(f == "@system-service" or f.startswith("~") for f in filters)


def test_only_the_state_directory_is_writable(service: dict[str, list[str]]) -> None:
    assert one(service, "StateDirectory") == "drd"
    writable = [p for value in service.get("ReadWritePaths", []) for p in value.split()]
    assert writable == ["/var/lib/drd"]
    for key in ("ReadWriteDirectories", "BindPaths", "InaccessiblePaths"):
        assert key not in service, f"{key}= is unexpected"


def test_runs_as_dedicated_user(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "drd"
    assert one(service, "Group") == "drd"
    assert "DynamicUser" not in service
    sysusers = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert any(fields[:2] == ["u", "drd"] for fields in sysusers), "sysusers must create drd"


def test_notify_watchdog_and_lifecycle(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert seconds(one(service, "WatchdogSec")) > 0
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "RestartSec")) > 0
    assert one(service, "KillMode") == "mixed"
    stop = seconds(one(service, "TimeoutStopSec"))
    needed = MAX_GRACE_SECONDS + CANCEL_WAIT_SECONDS
    assert needed < stop <= needed + 60, f"TimeoutStopSec={stop}s"


def test_default_shutdown_grace_fits_the_stop_timeout() -> None:
    from drd.config.models import DaemonConfig

    default = DaemonConfig.model_fields["shutdown_grace"].default
    assert default.total_seconds() <= MAX_GRACE_SECONDS


def test_keyring_comes_from_an_encrypted_credential(
    service: dict[str, list[str]], unit_text: str
) -> None:
    assert one(service, "LoadCredentialEncrypted") == ("drd-keys:/etc/credstore.encrypted/drd-keys")
    assert "LoadCredential" not in service, "only one way of delivering the key may be active"
    assert re.search(r"^#\s*LoadCredential=drd-keys:\S+", unit_text, re.M), (
        "document the LoadCredential= alternative in a comment"
    )
    readme = README.read_text(encoding="utf-8")
    assert "systemd-creds encrypt" in readme
    assert "--name=drd-keys" in readme


def test_exec_start_is_accepted_by_drds_parser(service: dict[str, list[str]]) -> None:
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[0] == "/usr/local/bin/drd"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == "/etc/drd/drd.yaml"


# ----------------------------------------------------------------------------- systemd itself


@pytest.fixture()
def verifiable_unit(tmp_path: Path, unit_text: str) -> Path:
    """A copy whose ExecStart binary exists on this machine (drd is not installed in /usr/local)."""
    text, count = re.subn(
        r"^ExecStart=\S+",
        f"ExecStart={shutil.which('true') or '/bin/true'}",
        unit_text,
        flags=re.M,
    )
    assert count == 1
    path = tmp_path / "drd.service"
    path.write_text(text, encoding="utf-8")
    return path


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.skip("systemd-analyze is not installed")
    return path


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    proc = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if not VERIFY_ENVIRONMENT.search(line)]
    assert not [line for line in errors if VERIFY_ERRORS.search(line)], output
    if proc.returncode != 0:
        assert not errors, f"systemd-analyze verify exited {proc.returncode}:\n{output}"


def test_systemd_analyze_security_exposure(verifiable_unit: Path) -> None:
    """The offline exposure score (0 = fully locked down, 10 = unprotected) stays low."""
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "offline" in proc.stderr and proc.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline security check")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout
