"""The audit trail: every API request that asks to change something (refused ones included) and
every drill, as a tamper-evident chain of records.

- A record carries `seq` (1, 2, 3, ... without gaps) and `prev`, the SHA-256 of the previous
  record's line as written (the first record's `prev` names the chain). Editing, deleting,
  reordering or truncating records breaks the chain, and `verify_trail` says where.
- Records are appended (and fsynced) to a local JSON-lines file in the state directory, 0600,
  and only then acknowledged: an API call never waits for storage.
- A background task ships them to every region as new objects, one per small batch,
  `_audit/<chain>/<first seq>-<last seq>.drd`, sealed with the keyring (the object's own key and
  range in its authenticated public part). An object is never rewritten: a region that missed a
  batch gets the records it lacks under their own range. The queue is bounded in memory; what
  does not fit is re-read from the local file.
- The chain is this host's: `<hostname>-<host id>`, the id made once and kept in the state
  directory, so a replacement host with the same name and an empty state directory starts a
  chain of its own instead of overwriting another's. A reader accepts only sealed audit objects
  of the chain it asks for, whose key, range and records agree.

Records never hold a token, only the token's name and role; request bodies are bounded and
anything that looks like a secret is redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drd import crypto
from drd.errors import DrdError, StateError
from drd.storage.base import Storage

log = logging.getLogger(__name__)

AUDIT_PREFIX = "_audit"
HOST_ID_FILE = "host-id"
# Records per shipped object, and records kept in memory for shipping (beyond that the shipper
# reads them back from the local file).
BATCH_RECORDS = 200
MAX_PENDING = 5_000
# A region that failed is tried again after this, doubling up to the cap.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# One region's round (a listing and its uploads) gives up after this, and is retried.
SHIP_TIMEOUT_SECONDS = 60.0
# What a recorded request body may hold.
MAX_BODY_CHARS = 4096
_SECRET_FIELD = re.compile(r"(?i)pass(word)?|secret|token|credential|private|key$|dsn")
_OBJECT_NAME = re.compile(r"(\d{12})-(\d{12})\.drd")


def genesis(chain: str) -> str:
    """The `prev` of a chain's first record."""
    return f"genesis:{chain}"


def line_digest(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line).hexdigest()


def encode_record(record: Mapping[str, Any]) -> bytes:
    """The one canonical form of a record: its line in the local file, what `prev` digests."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode()


def bounded_body(body: Any) -> Any:
    """A request body as it may be kept: secrets redacted, at most MAX_BODY_CHARS of JSON."""

    def scrub(value: Any, depth: int = 0) -> Any:
        if depth > 8:
            return "..."
        if isinstance(value, Mapping):
            return {
                str(k): "***" if _SECRET_FIELD.search(str(k)) else scrub(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [scrub(v, depth + 1) for v in value[:100]]
        return value

    cleaned = scrub(body)
    text = json.dumps(cleaned, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) <= MAX_BODY_CHARS:
        return cleaned
    return {"truncated": True, "chars": len(text), "head": text[:MAX_BODY_CHARS]}


def host_identity(state_dir: Path, hostname: str | None = None) -> str:
    """This host's chain name: its hostname and an id made once in the state directory."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", hostname or socket.gethostname())[:64] or "host"
    path = state_dir / HOST_ID_FILE
    try:
        host_id = path.read_text().strip()
    except FileNotFoundError:
        host_id = ""
    if not re.fullmatch(r"[0-9a-f]{16}", host_id):
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        host_id = secrets.token_hex(8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (host_id + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return f"{name}-{host_id}"


def object_key(chain: str, first: int, last: int) -> str:
    return f"{AUDIT_PREFIX}/{chain}/{first:012d}-{last:012d}.drd"


def seal_batch(keyring: crypto.Keyring, chain: str, records: Sequence[Mapping[str, Any]]) -> bytes:
    first, last = int(records[0]["seq"]), int(records[-1]["seq"])
    public = {
        "kind": "audit",
        "chain": chain,
        "first": first,
        "last": last,
        "key": object_key(chain, first, last),
        "key_id": keyring.primary.key_id,
    }
    return crypto.seal_manifest(keyring, public, {"records": list(records)})


def open_batch(keyring: crypto.Keyring, raw: bytes, key: str, chain: str) -> list[dict[str, Any]]:
    """The records of the sealed audit object stored at `key`, if it is one of `chain`'s and
    everything in it agrees with where it is. Raises IntegrityError otherwise."""
    from drd.errors import IntegrityError

    public, body = crypto.open_manifest(keyring, raw)
    where = f"audit object {key}"
    if public.get("kind") != "audit" or public.get("chain") != chain:
        raise IntegrityError(f"{where}: not an audit object of chain {chain}")
    if public.get("key") != key:
        raise IntegrityError(f"{where}: sealed for {public.get('key')!r}, found at another key")
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise IntegrityError(f"{where}: holds no records")
    seqs = [r.get("seq") if isinstance(r, dict) else None for r in records]
    first, last = public.get("first"), public.get("last")
    if seqs != list(range(int(first or 0), int(last or 0) + 1)):
        raise IntegrityError(f"{where}: its records are not {first}..{last} in order")
    return records


@dataclass
class _Region:
    storage: Storage
    #: the last seq known to be stored there (None: not looked up yet)
    shipped: int | None = None
    failures: int = 0
    warned: bool = False
    #: set by a new record (ship it when idle) and by flush() (also: retry now, not after the
    #: backoff)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retry_now: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class AuditLog:
    """One host's trail. `record` appends locally and returns; `start`/`close` run the shipper
    (it also starts by itself on the first record inside an event loop)."""

    def __init__(
        self,
        path: Path,
        regions: Mapping[str, Storage] | None = None,
        keyring: crypto.Keyring | None = None,
        *,
        hostname: str | None = None,
        on_state_error: Callable[[StateError], None] | None = None,
    ) -> None:
        self.path = path
        #: told when the local file cannot be written (the daemon's /readyz and metric)
        self.on_state_error = on_state_error or (lambda exc: log.error("%s", exc))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.chain = host_identity(path.parent, hostname)
        self.keyring = keyring
        self._regions = {
            name: _Region(s) for name, s in (regions or {}).items() if keyring is not None
        }
        self._lock = asyncio.Lock()
        self._seq, self._prev = self._load_tail()
        # Records not yet in every region, oldest first; bounded (see MAX_PENDING).
        self._pending: list[dict[str, Any]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # -- writing ---------------------------------------------------------------------------

    def _load_tail(self) -> tuple[int, str]:
        """(seq, digest) of the last record in the local file; a broken tail is reported and the
        chain goes on from the last intact record (verify_trail shows the damage)."""
        seq, prev = 0, genesis(self.chain)
        if not self.path.exists():
            return seq, prev
        with self.path.open("rb") as f:
            for raw in f:
                line = raw.rstrip(b"\n")
                try:
                    record = json.loads(line)
                    number = int(record["seq"])
                except (ValueError, KeyError, TypeError):
                    log.error("audit: %s holds a line that is not an audit record", self.path)
                    continue
                if number > seq:
                    seq, prev = number, line_digest(line)
        return seq, prev

    async def record(self, event: Mapping[str, Any], now: datetime | None = None) -> None:
        when = (now or datetime.now(UTC)).astimezone(UTC)
        async with self._lock:
            record = {
                "seq": self._seq + 1,
                "prev": self._prev,
                "chain": self.chain,
                "time": when.isoformat(),
                **{k: v for k, v in event.items() if k not in ("seq", "prev", "chain")},
            }
            line = encode_record(record)
            try:
                await asyncio.to_thread(self._append, line + b"\n")
            except OSError as exc:
                # The request was answered already: its record still goes to the regions (and
                # `drd audit verify` will say the local file lacks it), and the failure shows.
                self.on_state_error(
                    StateError(f"state directory: cannot append to {self.path}: {exc.strerror}")
                )
            self._seq, self._prev = record["seq"], line_digest(line)
            if self._regions:
                self._pending.append(json.loads(line))
                del self._pending[:-MAX_PENDING]
                self._idle.clear()
                for region in self._regions.values():
                    region.wake.set()
                self._ensure_shippers()

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, day: str | None = None) -> list[dict[str, Any]]:
        """The local trail's records (of one UTC day, `YYYY-MM-DD`, if given)."""
        records = [r for r, _ in read_local(self.path)]
        return [r for r in records if day is None or str(r.get("time", "")).startswith(day)]

    # -- shipping --------------------------------------------------------------------------

    def _ensure_shippers(self) -> None:
        """One shipping task per region, so that a slow or dead region delays only itself."""
        for name, region in self._regions.items():
            if region.task is None or region.task.done():
                with contextlib.suppress(RuntimeError):  # no running loop: shipped on start()
                    loop = asyncio.get_running_loop()
                    region.task = loop.create_task(self._ship_forever(name, region))

    async def start(self) -> None:
        if self._regions:
            self._idle.clear()  # whatever an earlier run left unshipped
            for region in self._regions.values():
                region.wake.set()
            self._ensure_shippers()

    async def flush(self, within: float | None = None) -> bool:
        """Wait until every record is in every region (True) or `within` seconds pass (False).
        A region waiting out a backoff is tried again at once."""
        if not self._regions:
            return True
        self._ensure_shippers()
        for region in self._regions.values():
            region.wake.set()
            region.retry_now.set()
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, grace: float = 5.0) -> None:
        """Ship what is pending for up to `grace` seconds, then stop (the rest is shipped by
        the next start, from the local file)."""
        if not await self.flush(grace):
            log.warning("audit: records not yet in every region after %.0fs: shipped later", grace)
        for region in self._regions.values():
            if region.task is not None:
                region.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await region.task
                region.task = None

    async def _ship_forever(self, name: str, region: _Region) -> None:
        while True:
            region.wake.clear()
            region.retry_now.clear()
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation that
                # arrives as the upload finishes (Python < 3.12), and close() would hang.
                async with asyncio.timeout(SHIP_TIMEOUT_SECONDS):
                    await self._ship_to(region)
            except Exception as exc:  # a region down must not stop the others or the API
                region.failures += 1
                backoff = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (region.failures - 1))
                if not region.warned:  # one line per outage, not one per try
                    why = str(exc) or type(exc).__name__
                    log.warning("audit: region %s: shipping failed (retrying): %s", name, why)
                    region.warned = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await region.retry_now.wait()
                continue
            if region.warned:
                log.info("audit: region %s: shipping again", name)
            region.failures, region.warned = 0, False
            self._progress()
            if (region.shipped or 0) >= self._seq:
                await region.wake.wait()

    def _progress(self) -> None:
        """Forget records every region has; say so when that is all of them."""
        floor = min((r.shipped or 0) for r in self._regions.values())
        self._pending = [r for r in self._pending if int(r["seq"]) > floor]
        if floor >= self._seq:
            self._idle.set()

    async def _ship_to(self, region: _Region) -> None:
        assert self.keyring is not None
        if region.shipped is None:
            region.shipped = await stored_high_water(region.storage, self.chain)
        while region.shipped < self._seq:
            batch = await self._records_after(region.shipped)
            if not batch:
                return
            key = object_key(self.chain, int(batch[0]["seq"]), int(batch[-1]["seq"]))
            await region.storage.put(key, seal_batch(self.keyring, self.chain, batch))
            region.shipped = int(batch[-1]["seq"])

    async def _records_after(self, seq: int) -> list[dict[str, Any]]:
        in_memory = [r for r in self._pending if int(r["seq"]) > seq]
        if in_memory and int(in_memory[0]["seq"]) == seq + 1:
            return in_memory[:BATCH_RECORDS]

        # Older than what memory holds (a restart, or more than MAX_PENDING behind): the file.
        def from_file() -> list[dict[str, Any]]:
            wanted = [r for r, _ in read_local(self.path) if int(r.get("seq", 0)) > seq]
            wanted.sort(key=lambda r: int(r["seq"]))
            run: list[dict[str, Any]] = []
            for r in wanted:  # a contiguous run only: a gap in the file is verify's to report
                if int(r["seq"]) != seq + 1 + len(run):
                    break
                run.append(r)
                if len(run) == BATCH_RECORDS:
                    break
            return run

        return await asyncio.to_thread(from_file)


def read_local(path: Path) -> list[tuple[dict[str, Any], bytes]]:
    """(record, line) for every parseable line of a local trail, in file order."""
    out: list[tuple[dict[str, Any], bytes]] = []
    if not path.exists():
        return out
    with path.open("rb") as f:
        for raw in f:
            line = raw.rstrip(b"\n")
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("seq"), int):
                    out.append((record, line))
    return out


async def stored_high_water(storage: Storage, chain: str) -> int:
    """The highest seq of `chain` stored in a region, by object names (0: none)."""
    high = 0
    for info in await storage.list(f"{AUDIT_PREFIX}/{chain}/"):
        match = _OBJECT_NAME.fullmatch(info.key.rsplit("/", 1)[-1])
        if match:
            high = max(high, int(match.group(2)))
    return high


# -- verification -------------------------------------------------------------------------------


@dataclass
class TrailReport:
    chain: str
    local_records: int = 0
    #: region -> records read from its sealed objects
    region_records: dict[str, int] = field(default_factory=dict)
    #: what breaks the trail: an edit, a gap, a reorder, a truncation, a foreign object
    findings: list[str] = field(default_factory=list)
    #: what is merely not shipped yet
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "local_records": self.local_records,
            "region_records": self.region_records,
            "findings": self.findings,
            "notes": self.notes,
        }


def _check_chain(
    chain: str, records: Iterable[tuple[int, str, str]], where: str, findings: list[str]
) -> None:
    """`records` as (seq, prev, digest of its line), in the order found: seq must count from 1
    without gaps and each prev must be the digest of the record before."""
    expected_seq, expected_prev = 1, genesis(chain)
    for seq, prev, digest in records:
        if seq != expected_seq:
            what = "missing" if seq > expected_seq else "out of order or repeated"
            findings.append(
                f"{where}: record {seq} follows {expected_seq - 1}: "
                f"records {what}" + (f" ({expected_seq}..{seq - 1})" if seq > expected_seq else "")
            )
        elif prev != expected_prev:
            findings.append(
                f"{where}: record {seq} does not chain to the record before it (edited)"
            )
        expected_seq, expected_prev = seq + 1, digest


async def verify_trail(
    path: Path,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    chain: str | None = None,
) -> TrailReport:
    """Check the local trail and every region's sealed copies of `chain` (default: this host's)
    against each other: any gap, edit, reorder or truncation in either is a finding, and a record
    deleted from one is found from the other."""
    chain = chain or host_identity(path.parent)
    report = TrailReport(chain)
    local = read_local(path)
    report.local_records = len(local)
    _check_chain(
        chain,
        ((int(r["seq"]), str(r.get("prev")), line_digest(line)) for r, line in local),
        "local trail",
        report.findings,
    )
    local_by_seq = {int(r["seq"]): line_digest(line) for r, line in local}
    for name, storage in regions.items():
        try:
            infos = await storage.list(f"{AUDIT_PREFIX}/{chain}/")
        except DrdError as exc:
            report.findings.append(f"region {name}: cannot list the trail: {exc}")
            continue
        stored: dict[int, tuple[str, str]] = {}
        for info in sorted(infos, key=lambda i: i.key):
            try:
                records = open_batch(keyring, await storage.get(info.key), info.key, chain)
            except DrdError as exc:
                report.findings.append(f"region {name}: {exc}")
                continue
            for r in records:
                seq, digest = int(r["seq"]), line_digest(encode_record(r))
                if seq in stored and stored[seq][1] != digest:
                    report.findings.append(f"region {name}: two different records {seq}")
                stored[seq] = (str(r.get("prev")), digest)
        report.region_records[name] = len(stored)
        _check_chain(
            chain,
            ((s, p, d) for s, (p, d) in sorted(stored.items())),
            f"region {name}",
            report.findings,
        )
        for seq, (_, digest) in sorted(stored.items()):
            if seq not in local_by_seq:
                report.findings.append(
                    f"local trail lacks record {seq}, which region {name} holds (deleted locally)"
                )
            elif local_by_seq[seq] != digest:
                report.findings.append(
                    f"record {seq} differs between the local trail and region {name} (edited)"
                )
        if stored and local_by_seq:
            top = max(stored)
            unshipped = [s for s in local_by_seq if s > top]
            if unshipped:
                report.notes.append(
                    f"region {name} does not hold records {min(unshipped)}..{max(unshipped)} "
                    "yet (shipped in the background)"
                )
        elif local_by_seq and not stored:
            report.notes.append(f"region {name} holds none of the trail yet")
    return report
