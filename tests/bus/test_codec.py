"""Tests for bus.codec: round trips of any size/codec/chunk size, and every way a stored
stream can be damaged."""

from __future__ import annotations

import gzip
import hashlib
import math
import random
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus.codec import (
    DEFAULT_PROBE_BYTES,
    Compression,
    Encoded,
    Encoder,
    IncompleteStream,
    decode,
    iter_pieces,
    sha256_hex,
)

KIB = 1024
MIB = 1024 * KIB
PIECE = MIB  # decode's default piece size


def encode(
    payload: bytes | Iterator[bytes],
    compression: Compression,
    chunk_size: int,
    **kwargs: int,
) -> tuple[list[bytes], Encoded]:
    """Run an encoder over ``payload`` (bytes, or pieces fed one by one)."""
    encoder = Encoder(compression, chunk_size, **kwargs)
    chunks: list[bytes] = []
    for piece in [payload] if isinstance(payload, bytes) else payload:
        chunks += encoder.feed(piece)
    chunks += encoder.finish()
    return chunks, encoder.result()


def decoded(chunks: list[bytes], compression: Compression, **kwargs: int | None) -> bytes:
    return b"".join(decode(chunks, compression, **kwargs))  # type: ignore[arg-type]


def text_like(size: int, seed: int = 0) -> bytes:
    """Compressible, but not trivially: words in random order (zstd gains ~3-5x)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=512)) + b"\n"
    return bytes(out[:size])


# -- the property ---------------------------------------------------------------------

MAX_PAYLOAD = 20 * 1000 * 1000
SHAPES = ("repeated", "random", "repeated_then_random", "random_then_repeated")


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """Up to 20 MB, built cheaply: a drawn block of a few KB repeated, and/or random
    bytes of a drawn length (from a drawn seed), in one of four shapes."""
    shape = draw(st.sampled_from(SHAPES))
    # Hypothesis favours small integers; a drawn megabyte count spreads sizes over the
    # whole range (over the 4 MiB probe, over any chunk size) as well as near zero.
    megabytes = draw(st.integers(0, 20))
    size = min(megabytes * 1_000_000 + draw(st.integers(0, 999_999)), MAX_PAYLOAD)
    block = draw(st.binary(min_size=1, max_size=4 * KIB))
    rng = random.Random(draw(st.integers(0, 2**32)))
    split = draw(st.integers(0, size))
    if shape == "repeated":
        data = (block * (size // len(block) + 1))[:size]
    elif shape == "random":
        data = rng.randbytes(size)
    else:
        head, tail = split, size - split
        if shape == "repeated_then_random":
            data = (block * (head // len(block) + 1))[:head] + rng.randbytes(tail)
        else:
            data = rng.randbytes(head) + (block * (tail // len(block) + 1))[:tail]
    return shape, data


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@example(  # the largest incompressible payload, in the smallest chunks
    shaped=("random", random.Random(1).randbytes(MAX_PAYLOAD)),
    compression=Compression.ZSTD,
    chunk_size=64 * KIB,
    feed_size=None,
)
@example(  # compressed output that fills its chunks exactly
    shaped=("repeated", b"x" * (8 * MIB)),
    compression=Compression.NONE,
    chunk_size=MIB,
    feed_size=333_333,
)
@example(
    shaped=("repeated", bytes(DEFAULT_PROBE_BYTES)),
    compression=Compression.GZIP,
    chunk_size=64 * KIB,
    feed_size=None,
)
@given(
    shaped=payloads(),
    compression=st.sampled_from(list(Compression)),
    chunk_size=st.integers(64 * KIB, 8 * MIB),
    feed_size=st.one_of(st.none(), st.integers(4 * KIB, 3 * MIB)),
)
def test_round_trip_any_payload_codec_and_chunk_size(
    shaped: tuple[str, bytes], compression: Compression, chunk_size: int, feed_size: int | None
) -> None:
    shape, data = shaped
    pieces = iter([data]) if feed_size is None else iter_pieces(data, feed_size)
    chunks, result = encode(pieces, compression, chunk_size)

    assert result.size == len(data)
    assert result.checksum == hashlib.sha256(data).hexdigest()
    assert result.stored_size == sum(len(c) for c in chunks)
    assert result.chunk_count == len(chunks) == math.ceil(result.stored_size / chunk_size)
    assert all(len(c) == chunk_size for c in chunks[:-1])
    assert not chunks or 0 < len(chunks[-1]) <= chunk_size

    out = list(decode(chunks, result.compression, expected_size=len(data)))
    assert all(0 < len(p) <= PIECE for p in out)
    assert b"".join(out) == data

    if shape == "random" or compression is Compression.NONE or not data:
        # Random bytes do not shrink: stored as they are, whatever codec was asked for.
        assert result.compression is Compression.NONE
    if result.compression is Compression.NONE:
        assert b"".join(chunks) == data
    else:
        assert result.compression is compression
        if len(data) <= DEFAULT_PROBE_BYTES:  # decided exactly: it did shrink
            assert result.stored_size < result.size


# -- encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("compression", list(Compression))
def test_empty_payload(compression: Compression) -> None:
    chunks, result = encode(b"", compression, 64 * KIB)
    assert chunks == []
    assert result == Encoded(Compression.NONE, 0, 0, hashlib.sha256(b"").hexdigest(), 0)
    assert decoded([], result.compression, expected_size=0) == b""


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_compressible_payload_is_compressed(compression: Compression) -> None:
    data = text_like(2 * MIB)
    chunks, result = encode(data, compression, 64 * KIB)
    assert result.compression is compression
    assert result.stored_size < len(data) / 2
    assert decoded(chunks, compression, expected_size=len(data)) == data
    whole = b"".join(chunks)  # a standard stream, readable by standard tools
    if compression is Compression.GZIP:
        assert gzip.decompress(whole) == data
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(whole) == data


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_probe_decides_on_the_head_of_a_long_payload(compression: Compression) -> None:
    probe = 64 * KIB
    rng = random.Random(7)
    compressible_head = b"a" * (2 * probe) + rng.randbytes(MIB)
    _, result = encode(
        iter_pieces(compressible_head, 16 * KIB), compression, 64 * KIB, probe_bytes=probe
    )
    assert result.compression is compression  # decided on the head; the tail is random

    random_head = rng.randbytes(2 * probe) + b"a" * MIB
    chunks, result = encode(
        iter_pieces(random_head, 16 * KIB), compression, 64 * KIB, probe_bytes=probe
    )
    assert result.compression is Compression.NONE
    assert b"".join(chunks) == random_head


@pytest.mark.parametrize("compression", list(Compression))
def test_iterator_of_odd_piece_sizes(compression: Compression) -> None:
    data = text_like(3 * MIB + 17, seed=3)
    sizes = [0, 1, 3, 65_537, 0, 2 * MIB + 1, 7, 999_999]
    pieces: list[bytes] = []
    at = 0
    for n in sizes * 10:
        pieces.append(data[at : at + n])
        at += n
    pieces.append(data[at:])
    assert b"".join(pieces) == data
    chunks, result = encode(iter(pieces), compression, 100_000)
    _, whole = encode(data, compression, 100_000)
    assert (result.size, result.checksum, result.compression) == (
        whole.size,
        whole.checksum,
        whole.compression,
    )
    assert all(len(c) == 100_000 for c in chunks[:-1])
    assert decoded(chunks, result.compression, expected_size=len(data)) == data
    assert b"".join(decode(chunks, result.compression, piece=1000)) == data
    assert max(len(p) for p in decode(chunks, result.compression, piece=1000)) <= 1000


def test_iter_pieces_splits_and_refuses_what_is_not_bytes() -> None:
    assert list(iter_pieces(b"abcdefg", 3)) == [b"abc", b"def", b"g"]
    assert list(iter_pieces(iter([b"abcd", bytearray(b"e"), memoryview(b"fg")]), 3)) == [
        b"abc",
        b"d",
        b"e",
        b"fg",
    ]
    assert list(iter_pieces(b"", 3)) == []
    with pytest.raises(TypeError, match="yielded str, expected bytes"):
        list(iter_pieces(iter([b"ok", "text"]), 3))  # type: ignore[list-item]


def test_encoder_misuse() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        Encoder(Compression.ZSTD, 0)
    encoder = Encoder(Compression.ZSTD, 64 * KIB)
    with pytest.raises(RuntimeError, match="not finished"):
        encoder.result()
    encoder.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        encoder.feed(b"more")
    with pytest.raises(RuntimeError, match="already finished"):
        encoder.finish()


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_hex(memoryview(b"abc")) == hashlib.sha256(b"abc").hexdigest()


# -- damaged streams --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored() -> dict[Compression, tuple[bytes, list[bytes]]]:
    """A payload of several chunks per codec (zstd and gzip compressed, none raw)."""
    data = text_like(3 * MIB, seed=11)
    out = {}
    for compression in Compression:
        chunks, result = encode(data, compression, 64 * KIB)
        assert result.compression is compression
        assert len(chunks) > 3
        out[compression] = (data, chunks)
    return out


def truncations(chunks: list[bytes]) -> dict[str, list[bytes]]:
    return {
        "last chunk missing": chunks[:-1],
        "last byte missing": [*chunks[:-1], chunks[-1][:-1]],
        "cut mid-chunk": [*chunks[:2], chunks[2][: len(chunks[2]) // 2]],
        "only the first 5 bytes": [chunks[0][:5]],
        "nothing at all": [],
    }


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
@pytest.mark.parametrize("expected", [True, False], ids=["expected_size", "no_expected_size"])
def test_truncated_stream_raises(
    stored: dict[Compression, tuple[bytes, list[bytes]]], compression: Compression, expected: bool
) -> None:
    data, chunks = stored[compression]
    for how, cut in truncations(chunks).items():
        kwargs = {"expected_size": len(data)} if expected else {}
        got = bytearray()
        with pytest.raises(IncompleteStream):
            for piece in decode(cut, compression, **kwargs):
                got += piece
        assert data.startswith(got), how  # what came out before the error was right


def test_truncated_raw_stream_raises_given_expected_size(
    stored: dict[Compression, tuple[bytes, list[bytes]]],
) -> None:
    data, chunks = stored[Compression.NONE]
    for how, cut in truncations(chunks).items():
        with pytest.raises(IncompleteStream, match=f"expected {len(data)}"):
            decoded(cut, Compression.NONE, expected_size=len(data))
        assert len(b"".join(cut)) < len(data), how


@pytest.mark.parametrize("compression", list(Compression))
def test_expected_size_mismatch_raises(
    stored: dict[Compression, tuple[bytes, list[bytes]]], compression: Compression
) -> None:
    data, chunks = stored[compression]
    assert decoded(chunks, compression, expected_size=len(data)) == data
    with pytest.raises(IncompleteStream, match=f"decodes to {len(data)} bytes, expected"):
        decoded(chunks, compression, expected_size=len(data) + 1)
    smaller = len(data) - 1
    got = bytearray()
    with pytest.raises(IncompleteStream, match=f"more than the expected {smaller}"):
        for piece in decode(chunks, compression, expected_size=smaller):
            got += piece
    assert len(got) <= smaller  # a piece that overshoots is never handed on


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
@pytest.mark.parametrize("where", ["in the last chunk", "as an extra chunk"])
def test_bytes_after_the_end_of_the_stream_raise(
    stored: dict[Compression, tuple[bytes, list[bytes]]], compression: Compression, where: str
) -> None:
    _, chunks = stored[compression]
    if where == "in the last chunk":
        damaged = [*chunks[:-1], chunks[-1] + b"garbage"]
    else:
        damaged = [*chunks, b"garbage"]
    with pytest.raises(IncompleteStream):
        decoded(damaged, compression)


def test_garbage_instead_of_a_stream_raises() -> None:
    for compression in (Compression.GZIP, Compression.ZSTD):
        with pytest.raises(IncompleteStream, match="damaged"):
            decoded([b"this is not a compressed stream at all"], compression)


def test_zstd_frames_with_checksum_and_content_size_decode() -> None:
    """Frames written by other zstd writers (content size, checksum) are read too."""
    data = text_like(MIB, seed=5)
    for kwargs in ({"write_checksum": True}, {"write_content_size": True}, {}):
        frame = zstandard.ZstdCompressor(**kwargs).compress(data)  # type: ignore[arg-type]
        pieces = [frame[i : i + 1000] for i in range(0, len(frame), 1000)]
        assert decoded(pieces, Compression.ZSTD) == data
        with pytest.raises(IncompleteStream):
            decoded([frame[:-1]], Compression.ZSTD)


def test_gzip_stream_damaged_mid_way_raises() -> None:
    data = text_like(MIB, seed=9)
    stream = bytearray(gzip.compress(data))
    stream[len(stream) // 2] ^= 0xFF
    with pytest.raises(IncompleteStream):
        decoded([bytes(stream)], Compression.GZIP, expected_size=len(data))
