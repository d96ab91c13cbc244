"""The tamper-evident audit trail (issue 14, point 4): a hash chain of records, appended locally
and shipped by a background task to every region as new objects, never rewritten; verification
finds a gap, an edit, a reorder or a truncation in the local file or in any region; a region
down never makes a caller wait; a replacement host starts its own chain."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from drd import crypto
from drd.errors import TransientStorageError
from drd.server import audit as audit_mod
from drd.server.audit import AuditLog, genesis, line_digest, verify_trail
from drd.storage.faults import FaultyStorage
from drd.storage.memory import MemoryStorage
from tests.support.audit import open_audit_object


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring.parse(crypto.generate_key(), "test")


@pytest.fixture
def regions() -> dict[str, FaultyStorage]:
    return {"a": FaultyStorage(MemoryStorage("a")), "b": FaultyStorage(MemoryStorage("b"))}


def trail(state: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring) -> AuditLog:
    return AuditLog(state / "audit.jsonl", dict(regions), keyring, hostname="host1")


async def shipped(storage: FaultyStorage, keyring: crypto.Keyring) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for info in await storage.inner.list("_audit/"):
        records += open_audit_object(keyring, await storage.inner.get(info.key))
    return sorted(records, key=lambda r: int(r["seq"]))


async def test_records_form_a_hash_chain_and_reach_every_region(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    log = trail(tmp_path, regions, keyring)
    for n in range(3):
        await log.record({"event": "api", "n": n})
    assert await log.flush(10)
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == genesis(log.chain)
    assert records[1]["prev"] == line_digest(lines[0])
    assert records[2]["prev"] == line_digest(lines[1])
    assert log.chain.startswith("host1-") and len(log.chain) == len("host1-") + 16
    for storage in regions.values():
        assert await shipped(storage, keyring) == records
    report = await verify_trail(tmp_path / "audit.jsonl", dict(regions), keyring, log.chain)
    assert report.ok, report.findings
    await log.close()


async def test_shipping_writes_new_objects_and_never_rewrites_one(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    log = trail(tmp_path, regions, keyring)
    await log.record({"event": "api", "n": 1})
    assert await log.flush(10)
    first = {i.key: await regions["a"].inner.get(i.key) for i in await regions["a"].list("_audit/")}
    for n in range(2, 6):
        await log.record({"event": "api", "n": n})
        assert await log.flush(10)
    for storage in regions.values():
        puts = [key for op, key in storage.calls if op == "put"]
        assert len(puts) == len(set(puts)) >= 2, puts  # one object per batch, each key once
    for key, raw in first.items():
        assert await regions["a"].inner.get(key) == raw  # the first object is as it was
    await log.close()


async def test_a_region_down_never_makes_the_caller_wait_and_catches_up(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    regions["b"].add_latency(2.0)
    regions["b"].fail("put", TransientStorageError("region b is down"))
    log = trail(tmp_path, regions, keyring)
    started = time.monotonic()
    for n in range(20):
        await log.record({"event": "api", "n": n})
    assert time.monotonic() - started < 1.0  # 20 calls, none waited for region b
    assert not await log.flush(1.0)  # b still lacks them
    assert len(await shipped(regions["a"], keyring)) == 20
    regions["b"].clear()
    assert await log.flush(10)  # tries b again at once, not after its backoff
    assert [r["seq"] for r in await shipped(regions["b"], keyring)] == list(range(1, 21))
    await log.close()


async def test_more_records_than_memory_holds_are_shipped_from_the_file(
    tmp_path: Path,
    regions: dict[str, FaultyStorage],
    keyring: crypto.Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_mod, "MAX_PENDING", 3)
    monkeypatch.setattr(audit_mod, "BATCH_RECORDS", 4)
    regions["b"].fail("put", TransientStorageError("down"))
    log = trail(tmp_path, regions, keyring)
    for n in range(10):
        await log.record({"event": "api", "n": n})
    assert len(log._pending) <= 3
    regions["b"].clear()
    assert await log.flush(10)
    assert [r["seq"] for r in await shipped(regions["b"], keyring)] == list(range(1, 11))
    await log.close()


async def test_a_restarted_daemon_ships_what_it_left_and_continues_the_chain(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    regions["b"].fail("put", TransientStorageError("down"))
    log = trail(tmp_path, regions, keyring)
    await log.record({"event": "api", "n": 1})
    await log.close(grace=0.2)
    regions["b"].clear()
    again = trail(tmp_path, regions, keyring)
    assert again.chain == log.chain
    await again.start()
    await again.record({"event": "api", "n": 2})
    assert await again.flush(10)
    records = await shipped(regions["b"], keyring)
    assert [r["seq"] for r in records] == [1, 2]
    assert records[1]["prev"] == line_digest(audit_mod.encode_record(records[0]))
    await again.close()


async def _intact(tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring):
    log = trail(tmp_path, regions, keyring)
    for n in range(5):
        await log.record({"event": "api", "n": n})
    assert await log.flush(10)
    await log.close()
    return log


async def test_a_deleted_local_line_is_found_from_the_sealed_copies(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    log = await _intact(tmp_path, regions, keyring)
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))  # record 2 laundered away
    report = await verify_trail(path, dict(regions), keyring, log.chain)
    assert not report.ok
    text = "\n".join(report.findings)
    assert "local trail: record 3 follows 1: records missing (2..2)" in text
    assert "local trail lacks record 2, which region a holds" in text
    # A later record is shipped as a new object; the sealed record 2 stays where it was.
    again = trail(tmp_path, regions, keyring)
    await again.record({"event": "api", "n": "after"})
    assert await again.flush(10)
    assert [r["seq"] for r in await shipped(regions["a"], keyring)] == [1, 2, 3, 4, 5, 6]
    await again.close()


@pytest.mark.parametrize("attack", ["edit", "reorder", "truncate"])
async def test_local_edits_reorders_and_truncations_are_found(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring, attack: str
) -> None:
    log = await _intact(tmp_path, regions, keyring)
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    if attack == "edit":
        lines[2] = lines[2].replace(b'"n": 2', b'"n": 99')
        needle = "record 3 differs between the local trail and region a"
    elif attack == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
        needle = "out of order"
    else:
        lines = lines[:3]
        needle = "local trail lacks record 4"
    path.write_bytes(b"".join(lines))
    report = await verify_trail(path, dict(regions), keyring, log.chain)
    assert any(needle in f for f in report.findings), report.findings


async def test_a_deleted_or_substituted_region_object_is_found(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    log = trail(tmp_path, regions, keyring)
    for n in range(3):
        await log.record({"event": "api", "n": n})
        assert await log.flush(10)  # one object per record
    await log.close()
    a = regions["a"].inner
    keys = [i.key for i in await a.list("_audit/")]
    assert len(keys) == 3
    await a.delete(keys[1])
    # A sealed manifest that is not an audit record of this chain, under an audit name.
    foreign = crypto.seal_manifest(keyring, {"kind": "backup"}, {"records": []})
    await regions["b"].inner.put(keys[2], foreign)
    report = await verify_trail(tmp_path / "audit.jsonl", dict(regions), keyring, log.chain)
    text = "\n".join(report.findings)
    assert "region a: record 3 follows 1: records missing (2..2)" in text
    assert f"region b: audit object {keys[2]}: not an audit object of chain" in text
    # An object of the right chain moved to another record's name is refused as well.
    await regions["b"].inner.put(keys[2], await a.get(keys[0]))
    report = await verify_trail(tmp_path / "audit.jsonl", dict(regions), keyring, log.chain)
    assert any("found at another key" in f for f in report.findings), report.findings


async def test_a_replacement_host_with_the_same_name_starts_its_own_chain(
    tmp_path: Path, regions: dict[str, FaultyStorage], keyring: crypto.Keyring
) -> None:
    old = await _intact(tmp_path / "old", regions, keyring)
    new = trail(tmp_path / "new", regions, keyring)  # same hostname, empty state dir
    assert new.chain != old.chain
    await new.record({"event": "api", "n": "new host"})
    assert await new.flush(10)
    await new.close()
    for state, chain in ((tmp_path / "old", old.chain), (tmp_path / "new", new.chain)):
        report = await verify_trail(state / "audit.jsonl", dict(regions), keyring, chain)
        assert report.ok, report.findings
    assert len(await shipped(regions["a"], keyring)) == 6  # both chains, side by side


def test_request_bodies_are_bounded_and_secrets_redacted() -> None:
    body = {"plan": "p", "password": "hunter2", "nested": {"api_token": "t", "ok": 1}}
    assert audit_mod.bounded_body(body) == {
        "plan": "p",
        "password": "***",
        "nested": {"api_token": "***", "ok": 1},
    }
    big = audit_mod.bounded_body({"x": "y" * 10_000})
    assert big["truncated"] is True and len(big["head"]) == audit_mod.MAX_BODY_CHARS


async def test_drd_audit_verify_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from drd.cli.main import main
    from drd.storage.local import LocalStorage
    from tests.support.drdenv import DrdEnv

    env = DrdEnv(tmp_path)
    paths = [env.add_local_region("a"), env.add_local_region("b")]
    (tmp_path / "src").mkdir()
    env.add_plan("app", [{"name": "files", "kind": "files", "path": str(tmp_path / "src")}])
    env.write()
    keyring = crypto.Keyring.parse(env.key, "test")
    stores = {p.name: LocalStorage(p.name, p) for p in paths}
    log = AuditLog(tmp_path / "state" / "audit.jsonl", stores, keyring)
    for n in range(4):
        await log.record({"event": "api", "n": n})
    await log.close(10)
    monkeypatch.setenv("DRD_KEYS", env.key)
    args = ["--config", str(env.config_path), "audit", "verify"]
    # main() runs its own event loop: call it from a thread, as the console script would.
    import asyncio

    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert "4 local record(s); in the regions: a: 4, b: 4" in out and "ok: the trail" in out
    path = tmp_path / "state" / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    monkeypatch.setenv("DRD_KEYS", env.key)
    assert await asyncio.to_thread(main, [*args, "--json"]) == 5
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    assert (
        "local trail lacks record 4, which region a holds (deleted locally)" in report["findings"]
    )
