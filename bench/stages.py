"""Throughput of drd's byte transforms alone, in this process, on real dump bytes.

Each stage gets the same input: the first `limit` bytes of the benchmark database's
`pg_dump -Fc -Z0` output, fed in the 1 MiB chunks drd's pipeline uses. One thread, no I/O:
this is what one core can do, the ceiling for that stage in the data path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard

from drd import crypto
from drd.digests import ContentDigest, Crc32c
from drd.pipeline.backup import ZSTD_LEVEL
from drd.repository.sealing import Opener, Sealer

CHUNK = 1 << 20
MIB = 1024 * 1024


@dataclass
class StageResult:
    stage: str
    input_bytes: int
    output_bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / MIB / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mib_per_s": round(self.mb_per_s, 1)}


def _chunks(data: bytes, size: int = CHUNK) -> Iterable[memoryview]:
    view = memoryview(data)
    return (view[i : i + size] for i in range(0, len(view), size))


def _best_of(runs: int, fn: Callable[[], int]) -> tuple[float, int]:
    best, out = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def measure_stages(dump_file: Path, limit: int = 256 * MIB, runs: int = 3) -> list[StageResult]:
    with open(dump_file, "rb") as f:
        plain = f.read(limit)
    key = crypto.new_data_key()
    segment = crypto.DEFAULT_SEGMENT_SIZE
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(plain)
    # The data path hands these stages `bytes` chunks (CRC32C accepts nothing else); cut once
    # here, untimed: a copy per chunk inside the timing understated them (BLAKE3 on this dump:
    # 6,768 MiB/s with the copy, 7,388 without).
    plain_chunks = [bytes(c) for c in _chunks(plain)]
    results: list[StageResult] = []

    def add(stage: str, n_in: int, fn: Callable[[], int]) -> None:
        seconds, n_out = _best_of(runs, fn)
        results.append(StageResult(stage, n_in, n_out, seconds))

    def zstd_compress(level: int) -> Callable[[], int]:
        def run() -> int:
            c = zstandard.ZstdCompressor(level=level).compressobj()
            n = sum(len(c.compress(chunk)) for chunk in _chunks(plain))
            return n + len(c.flush())

        return run

    def aes_encrypt() -> int:
        e = crypto.StreamEncryptor(
            key, segment_size=segment, backup_id="bench", key_id="bench", object_name="data"
        )
        return sum(len(e.update(chunk)) for chunk in _chunks(compressed)) + len(e.finalize())

    def digest(algorithm: str) -> Callable[[], int]:
        def run() -> int:
            h = ContentDigest(algorithm)
            for chunk in plain_chunks:
                h.update(chunk)
            return len(h.tagged())

        return run

    def crc32c() -> int:
        c = Crc32c()
        for chunk in plain_chunks:
            c.update(chunk)
        return len(c.b64())

    def seal() -> int:
        s = Sealer(
            key,
            segment_size=segment,
            level=ZSTD_LEVEL,
            backup_id="bench",
            key_id="bench",
            object_name="data",
        )
        return sum(len(s.feed(chunk)) for chunk in plain_chunks) + len(s.finish())

    sealer = Sealer(
        key,
        segment_size=segment,
        level=ZSTD_LEVEL,
        backup_id="bench",
        key_id="bench",
        object_name="data",
    )
    sealed = b"".join([*(sealer.feed(c) for c in plain_chunks), sealer.finish()])
    sealed_chunks = [bytes(c) for c in _chunks(sealed)]

    def zstd_decompress() -> int:
        d = zstandard.ZstdDecompressor().decompressobj()
        return sum(len(d.decompress(chunk)) for chunk in _chunks(compressed))

    def aes_decrypt() -> int:
        d = crypto.StreamDecryptor(key, backup_id="bench", key_id="bench", object_name="data")
        return sum(len(d.update(chunk)) for chunk in _chunks(sealed)) + len(d.finalize())

    def open_() -> int:
        o = Opener(
            key,
            backup_id="bench",
            key_id="bench",
            object_name="data",
            expect_ciphertext=(sealer.ciphertext_size, sealer.ciphertext_digest),
            expect_plaintext=(sealer.plaintext_size, sealer.plaintext_digest),
        )
        n = sum(len(piece) for chunk in sealed_chunks for piece in o.feed(chunk))
        return n + sum(len(piece) for piece in o.finish())

    add(f"zstd level {ZSTD_LEVEL} compress (drd's level)", len(plain), zstd_compress(ZSTD_LEVEL))
    if ZSTD_LEVEL != 3:
        add("zstd level 3 compress (for comparison)", len(plain), zstd_compress(3))
    add("AES-256-GCM encrypt (1 MiB segments)", len(compressed), aes_encrypt)
    add("BLAKE3 (drd's content digest)", len(plain), digest("blake3"))
    add("SHA-256 (drd 0.1's digest, for comparison)", len(plain), digest("sha256"))
    add("CRC32C (storage checksum)", len(plain), crc32c)
    add("Sealer: BLAKE3 + zstd + AES-GCM + BLAKE3 + CRC32C (backup chain)", len(plain), seal)
    add("zstd decompress", len(compressed), zstd_decompress)
    add("AES-256-GCM decrypt", len(sealed), aes_decrypt)
    add("Opener: BLAKE3 + AES-GCM + zstd + BLAKE3 (restore chain)", len(sealed), open_)
    return results
