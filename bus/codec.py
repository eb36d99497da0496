"""The codec: compress, checksum and chunk a payload as it streams, and undo it.

Pure functions over bytes: no I/O. Memory stays bounded by the chunk size whatever the
payload size, in both directions.

Encoding decides whether compression pays on a *probe*: the first ``probe_bytes`` of the
payload. A payload that fits in the probe is decided exactly (stored as ``none`` when the
codec does not shrink it); a longer one is decided on its head, because a stream cannot
be rewound. The ``compression_waste`` detector catches the rare payload whose tail then
proved incompressible.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import zstandard

__all__ = [
    "DEFAULT_PROBE_BYTES",
    "Compression",
    "Encoded",
    "Encoder",
    "IncompleteStream",
    "decode",
    "iter_pieces",
    "sha256_hex",
]

DEFAULT_PROBE_BYTES = 4 * 1024 * 1024
_PIECE = 1024 * 1024  # largest slice fed to a (de)compressor at once
_GZIP_INPUT = 64 * 1024  # compressed bytes handed to zlib at once when decoding
_StoredChunk = bytes | bytearray | memoryview  # a stored chunk, as decode() takes it


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class IncompleteStream(ValueError):
    """Stored bytes end before the compressed stream does (truncated or damaged)."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """What an encoder produced, once finished."""

    compression: Compression
    size: int
    stored_size: int
    checksum: str
    chunk_count: int


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, mode: int = ..., /) -> bytes: ...


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_pieces(
    payload: bytes | bytearray | memoryview | Iterable[bytes], size: int = _PIECE
) -> Iterator[bytes]:
    """Yield a payload as pieces of at most ``size`` bytes (bytes or an iterable of bytes)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        view = memoryview(payload)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    for part in payload:
        if not isinstance(part, bytes | bytearray | memoryview):
            raise TypeError(f"payload iterator yielded {type(part).__name__}, expected bytes")
        if len(part) <= size:
            yield bytes(part)
        else:
            yield from iter_pieces(part, size)


def _new_compressor(compression: Compression, level: int | None) -> _Compressor:
    if compression is Compression.GZIP:
        return zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
    if compression is Compression.ZSTD:
        cctx = zstandard.ZstdCompressor(level=3 if level is None else level)
        compressor: _Compressor = cctx.compressobj()
        return compressor
    raise ValueError(f"no compressor for {compression}")


def _sync_flush_mode(compression: Compression) -> int:
    if compression is Compression.GZIP:
        return zlib.Z_SYNC_FLUSH
    return int(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


class Encoder:
    """Feed the original bytes, collect stored chunks of exactly ``chunk_size`` bytes.

    >>> enc = Encoder(Compression.ZSTD, chunk_size=1 << 20)
    >>> chunks = [*enc.feed(b"x" * 10), *enc.finish()]
    >>> enc.result().size
    10
    """

    def __init__(
        self,
        compression: Compression,
        chunk_size: int,
        *,
        level: int | None = None,
        probe_bytes: int = DEFAULT_PROBE_BYTES,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._wanted = Compression(compression)
        self._chunk_size = chunk_size
        self._probe_bytes = max(1, probe_bytes)
        self._hash = hashlib.sha256()
        self._size = 0
        self._stored_size = 0
        self._chunk_count = 0
        self._out = bytearray()
        self._result: Encoded | None = None
        self._compressor: _Compressor | None = None
        # Until decided, the raw head is held alongside its compressed form.
        self._decided: Compression | None = None
        self._held_raw = bytearray()
        if self._wanted is Compression.NONE:
            self._decided = Compression.NONE
        else:
            self._compressor = _new_compressor(self._wanted, level)

    @property
    def size(self) -> int:
        """Original bytes fed so far."""
        return self._size

    @property
    def compression(self) -> Compression:
        """The codec in use (the wanted one until the probe decides otherwise)."""
        return self._decided or self._wanted

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        if self._result is not None:
            raise RuntimeError("encoder already finished")
        for piece in iter_pieces(data):
            self._hash.update(piece)
            self._size += len(piece)
            if self._decided is None:
                self._held_raw += piece
                assert self._compressor is not None
                self._out += self._compressor.compress(piece)
                if len(self._held_raw) >= self._probe_bytes:
                    self._out += self._compressor.flush(_sync_flush_mode(self._wanted))
                    self._decide()
            elif self._decided is Compression.NONE:
                self._out += piece
            else:
                assert self._compressor is not None
                self._out += self._compressor.compress(piece)
        return self._cut(final=False)

    def finish(self) -> list[bytes]:
        if self._result is not None:
            raise RuntimeError("encoder already finished")
        if self._compressor is not None and self._decided is not Compression.NONE:
            self._out += self._compressor.flush()
        if self._decided is None:
            self._decide()
        chunks = self._cut(final=True)
        self._result = Encoded(
            compression=self.compression,
            size=self._size,
            stored_size=self._stored_size,
            checksum=self._hash.hexdigest(),
            chunk_count=self._chunk_count,
        )
        return chunks

    def result(self) -> Encoded:
        if self._result is None:
            raise RuntimeError("encoder not finished")
        return self._result

    def _decide(self) -> None:
        if len(self._out) < len(self._held_raw):
            self._decided = self._wanted
        else:
            self._decided = Compression.NONE
            self._out = self._held_raw
            self._compressor = None
        self._held_raw = bytearray()

    def _cut(self, *, final: bool) -> list[bytes]:
        if self._decided is None:
            return []
        chunks: list[bytes] = []
        size = self._chunk_size
        while len(self._out) >= size or (final and self._out):
            with memoryview(self._out) as view:  # one copy, not a slice and then a copy
                chunk = bytes(view[:size])
            del self._out[:size]
            chunks.append(chunk)
            self._stored_size += len(chunk)
            self._chunk_count += 1
        return chunks


class _ChunkReader:
    """A read(n) view over an iterator of chunks, as zstandard's streaming API wants.

    Hands out memoryview slices of each chunk (no copies), and shows every byte it
    hands out to ``tracker``.
    """

    def __init__(
        self, chunks: Iterable[_StoredChunk], tracker: _ZstdFrameEnd | None = None
    ) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")
        self._tracker = tracker

    def read(self, size: int = -1) -> memoryview:
        while not self._view:
            try:
                self._view = memoryview(next(self._chunks))
            except StopIteration:
                return memoryview(b"")
        if size < 0 or size >= len(self._view):
            data, self._view = self._view, memoryview(b"")
        else:
            data, self._view = self._view[:size], self._view[size:]
        if self._tracker is not None:
            self._tracker.update(data)
        return data


class _ZstdFrameEnd:
    """Follows one zstd frame's headers (RFC 8878, 3.1.1) as its bytes stream past.

    zstandard's streaming reader returns end-of-data alike for a complete frame and for
    one cut short at a block boundary, and its one-shot API would hold all the output in
    memory; reading the 3-byte block headers (and skipping the block contents) tells the
    two apart at no real cost. ``complete`` once the last block (and the content checksum,
    when the frame has one) went past; ``trailing`` if any byte came after that.
    """

    def __init__(self) -> None:
        self._held = bytearray()  # the header being collected
        self._need = 5  # magic number + frame header descriptor
        self._skip = 0  # bytes still to pass over (rest of the frame header, block contents)
        self._in_blocks = False
        self._last = False
        self._checksum = 0
        self.complete = False
        self.trailing = False

    def update(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                self.complete = self._last and not self._skip
                continue
            if self.complete:
                self.trailing = True
                return
            take = min(self._need - len(self._held), end - pos)
            self._held += data[pos : pos + take]
            pos += take
            if len(self._held) == self._need:
                header = bytes(self._held)
                self._held.clear()
                self._header(header)

    def _header(self, header: bytes) -> None:
        if not self._in_blocks:
            if int.from_bytes(header[:4], "little") != zstandard.MAGIC_NUMBER:
                raise IncompleteStream("zstd stream damaged: no zstd frame at its start")
            descriptor = header[4]
            single_segment = descriptor >> 5 & 1
            content_size = (0, 2, 4, 8)[descriptor >> 6] or single_segment
            dictionary_id = (0, 1, 2, 4)[descriptor & 3]
            self._checksum = 4 if descriptor & 4 else 0
            self._skip = (1 - single_segment) + dictionary_id + content_size
            self._in_blocks = True
            self._need = 3
            return
        value = int.from_bytes(header, "little")
        last, kind, size = value & 1, value >> 1 & 3, value >> 3
        if kind == 3:
            raise IncompleteStream("zstd stream damaged: reserved block type")
        self._skip = 1 if kind == 1 else size  # an RLE block stores its one byte
        if last:
            self._last = True
            self._skip += self._checksum
            self.complete = not self._skip


def decode(
    stored_chunks: Iterable[_StoredChunk],
    compression: Compression,
    *,
    expected_size: int | None = None,
    piece: int = _PIECE,
) -> Iterator[bytes]:
    """Yield the original bytes of a stored payload, in pieces of at most ``piece`` bytes.

    Raises :class:`IncompleteStream` when the stored bytes end mid-stream, carry garbage
    after it, or (given ``expected_size``) decode to more or fewer bytes than expected.
    A piece that would overshoot ``expected_size`` is never yielded. Checksums are the
    caller's business (see ``bus.store``), so that it can check stored chunks before
    handing any byte on.
    """
    compression = Compression(compression)
    if compression is Compression.NONE:
        pieces: Iterator[bytes] = _decode_none(stored_chunks, piece)
    elif compression is Compression.GZIP:
        pieces = _decode_gzip(stored_chunks, piece)
    else:
        pieces = _decode_zstd(stored_chunks, piece)
    produced = 0
    for out in pieces:
        produced += len(out)
        if expected_size is not None and produced > expected_size:
            raise IncompleteStream(f"decodes to more than the expected {expected_size} bytes")
        yield out
    if expected_size is not None and produced != expected_size:
        raise IncompleteStream(f"decodes to {produced} bytes, expected {expected_size}")


def _decode_none(stored_chunks: Iterable[_StoredChunk], piece: int) -> Iterator[bytes]:
    source = iter(stored_chunks)
    chunk: _StoredChunk | None = None
    # The previous chunk is let go before the next one is fetched.
    while (chunk := next(source, None)) is not None:
        yield from iter_pieces(chunk, piece)
        chunk = None


def _decode_gzip(stored_chunks: Iterable[_StoredChunk], piece: int) -> Iterator[bytes]:
    inflater = zlib.decompressobj(31)
    try:
        for chunk in stored_chunks:
            # Fed in slices: `unconsumed_tail` is a copy of what is left of the input.
            view = memoryview(chunk)
            for start in range(0, len(view), _GZIP_INPUT):
                data: bytes | memoryview = view[start : start + _GZIP_INPUT]
                while data:
                    out = inflater.decompress(data, piece)
                    if out:
                        yield out
                    data = inflater.unconsumed_tail
                    if inflater.eof and (data or inflater.unused_data):
                        raise IncompleteStream("bytes after the end of the gzip stream")
        while not inflater.eof:
            out = inflater.decompress(b"", piece)
            if not out:
                break
            yield out
    except zlib.error as exc:
        raise IncompleteStream(f"gzip stream damaged: {exc}") from exc
    if not inflater.eof:
        raise IncompleteStream("gzip stream ends early")


def _decode_zstd(stored_chunks: Iterable[_StoredChunk], piece: int) -> Iterator[bytes]:
    dctx = zstandard.ZstdDecompressor()
    frame = _ZstdFrameEnd()
    reader: Any = _ChunkReader(stored_chunks, frame)
    try:
        with dctx.stream_reader(reader, read_size=piece, read_across_frames=False) as stream:
            while True:
                out = stream.read(piece)
                if not out:
                    break
                yield out
    except zstandard.ZstdError as exc:
        raise IncompleteStream(f"zstd stream damaged: {exc}") from exc
    if not frame.complete:
        raise IncompleteStream("zstd stream ends early")
    if reader.read(1) or frame.trailing:
        raise IncompleteStream("bytes after the end of the zstd stream")
