"""drd.bytequeue: pieces handed on as they came, cut without copies, exact accounting."""

from __future__ import annotations

import random

import pytest

from drd.bytequeue import ByteQueue


def test_a_whole_piece_is_handed_on_as_the_same_object() -> None:
    q = ByteQueue()
    piece = b"x" * 1000
    q.append(piece)
    assert q.take(1000) is piece and q.size == 0


def test_peek_leaves_the_bytes_and_cuts_with_views() -> None:
    q = ByteQueue()
    for piece in (b"abc", b"defg", b"hi"):
        q.append(piece)
    parts = q.peek(5)
    assert b"".join(parts) == b"abcde" and isinstance(parts[-1], memoryview)
    assert q.size == 9
    q.drop(5)
    assert q.take(4) == b"fghi" and q.size == 0


def test_appended_mutable_buffers_are_snapshotted() -> None:
    q = ByteQueue()
    data = bytearray(b"abc")
    q.append(data)  # type: ignore[arg-type]
    data[0] = ord("z")
    assert q.take(3) == b"abc"


@pytest.mark.parametrize("seed", range(5))
def test_any_sequence_of_appends_and_takes_keeps_the_stream(seed: int) -> None:
    rng = random.Random(seed)
    q, sent, got = ByteQueue(), bytearray(), bytearray()
    for _ in range(300):
        if rng.random() < 0.6:
            piece = rng.randbytes(rng.randrange(0, 50))
            q.append(piece)
            sent += piece
        elif q.size:
            n = rng.randrange(0, q.size + 1)
            if rng.random() < 0.5:
                got += q.take(n)
            else:
                got += b"".join(q.peek(n))
                q.drop(n)
        assert q.size == len(sent) - len(got)
    got += q.take(q.size)
    assert got == sent
    q.append(b"x")
    q.clear()
    assert q.size == 0
