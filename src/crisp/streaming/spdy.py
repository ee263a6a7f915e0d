"""SPDY/3.1 framing and a small asyncio session, as the kubelet's proxy and crictl speak it.

No maintained Python library speaks SPDY any more, and Kubernetes still uses it for exec,
attach and port-forward, so crisp carries its own: the frames of the SPDY/3 draft (section
2.6), header blocks compressed with one zlib stream per direction primed with the draft's
dictionary (2.6.10.1), and a session that multiplexes streams over one connection.

Flow control: SPDY/3.1 defines windows, but the Go implementation every Kubernetes client
uses (spdystream) neither sends WINDOW_UPDATE nor honours windows, so a sender that waited on
them would stall after 64 KiB. The session therefore never blocks on a window and never sends
WINDOW_UPDATE; it accepts and ignores the peer's. Back-pressure comes from TCP instead: a
stream's receive buffer is bounded and the frame reader waits when it is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

VERSION = 3
MAX_FRAME_LENGTH = 0xFFFFFF
# Data frames crisp sends are at most this long (spdystream reads in 32 KiB pieces).
DATA_CHUNK = 32 * 1024
_HEADER = struct.Struct(">II")


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# The SPDY/3 header compression dictionary (draft 3, 2.6.10.1): 4-byte-length-prefixed header
# names and common values, then a run of status codes, reason phrases, dates and media types.
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
    "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, "
    "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(
    struct.pack(">I", len(word)) + word.encode() for word in _DICTIONARY_WORDS
) + _DICTIONARY_TAIL.encode()


class ProtocolError(Exception):
    """The peer broke the framing rules; the session ends with GOAWAY PROTOCOL_ERROR."""


class StreamError(Exception):
    """One stream broke the rules; that stream is reset with ``status``."""

    def __init__(self, stream_id: int, status: RstStatus, message: str):
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


class StreamReset(ConnectionError):
    """The peer reset the stream or the session ended before it finished."""


Headers = dict[str, list[str]]


@dataclass(frozen=True)
class Frame:
    """A parsed frame. Control frames have ``type``; data frames have ``type`` None."""

    type: FrameType | int | None
    flags: int
    stream_id: int = 0
    payload: bytes = b""
    headers: Headers = field(default_factory=dict)
    associated_id: int = 0
    priority: int = 0
    status: int = 0
    ping_id: int = 0
    delta: int = 0
    settings: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)


# Header blocks -------------------------------------------------------------------------------

class HeaderCompressor:
    """One direction's zlib stream: every header block continues it (Z_SYNC_FLUSH each)."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 9,
                                      zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Mapping[str, list[str] | str]) -> bytes:
        return self._zlib.compress(encode_header_block(headers)) + self._zlib.flush(
            zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)

    def decompress(self, data: bytes) -> Headers:
        try:
            raw = self._zlib.decompress(data)
        except zlib.error as error:
            raise ProtocolError(f"header block does not decompress: {error}") from None
        return decode_header_block(raw)


def encode_header_block(headers: Mapping[str, list[str] | str]) -> bytes:
    """Count, then length-prefixed lowercase names and NUL-joined values."""
    parts = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        listed = [values] if isinstance(values, str) else values
        raw_name = name.lower().encode()
        raw_value = b"\0".join(value.encode() for value in listed)
        parts += [struct.pack(">I", len(raw_name)), raw_name,
                  struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(raw: bytes) -> Headers:
    """The header block's names and values; the draft's rules on names are enforced."""
    view = memoryview(raw)
    offset = 0

    def take(count: int) -> bytes:
        nonlocal offset
        if offset + count > len(view):
            raise ProtocolError("header block is truncated")
        piece = bytes(view[offset:offset + count])
        offset += count
        return piece

    (pairs,) = struct.unpack(">I", take(4))
    headers: Headers = {}
    for _ in range(pairs):
        (name_length,) = struct.unpack(">I", take(4))
        if name_length == 0:
            raise ProtocolError("header name of length zero")
        name = take(name_length).decode("latin-1")
        if name != name.lower():
            raise ProtocolError(f"header name {name!r} is not lowercase")
        if name in headers:
            raise ProtocolError(f"header {name!r} appears twice")
        (value_length,) = struct.unpack(">I", take(4))
        value = take(value_length).decode("latin-1")
        headers[name] = value.split("\0")
    if offset != len(view):
        raise ProtocolError("bytes after the last header")
    return headers


# Frames --------------------------------------------------------------------------------------

def control_frame(kind: FrameType, flags: int, body: bytes) -> bytes:
    if len(body) > MAX_FRAME_LENGTH:
        raise ValueError("frame body too long")
    return _HEADER.pack(0x80000000 | (VERSION << 16) | int(kind),
                        (flags << 24) | len(body)) + body


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    if len(data) > MAX_FRAME_LENGTH:
        raise ValueError("frame body too long")
    return _HEADER.pack(stream_id & 0x7FFFFFFF,
                        ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def data_frames(stream_id: int, data: bytes | bytearray | memoryview, fin: bool = False
                ) -> bytearray:
    """``data`` as data frames of at most :data:`DATA_CHUNK` bytes, FIN on the last.

    Filled into one buffer: slicing, concatenating and joining the pieces cost 15 times as
    much (fresh large objects on every step), which was most of port-forward's CPU.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    count = max(1, -(-size // DATA_CHUNK))
    out = bytearray(size + 8 * count)
    position = 0
    for start in range(0, max(size, 1), DATA_CHUNK):
        piece = view[start:start + DATA_CHUNK]
        last = start + DATA_CHUNK >= size
        _HEADER.pack_into(out, position, stream_id & 0x7FFFFFFF,
                          ((FLAG_FIN if fin and last else 0) << 24) | len(piece))
        out[position + 8:position + 8 + len(piece)] = piece
        position += 8 + len(piece)
    return out


def syn_stream(compressor: HeaderCompressor, stream_id: int, headers: Mapping[str, list[str]],
               *, fin: bool = False, associated_id: int = 0, priority: int = 0) -> bytes:
    body = struct.pack(">IIBB", stream_id, associated_id, (priority & 7) << 5, 0)
    return control_frame(FrameType.SYN_STREAM, FLAG_FIN if fin else 0,
                         body + compressor.compress(headers))


def syn_reply(compressor: HeaderCompressor, stream_id: int, headers: Mapping[str, list[str]],
              *, fin: bool = False) -> bytes:
    return control_frame(FrameType.SYN_REPLY, FLAG_FIN if fin else 0,
                         struct.pack(">I", stream_id) + compressor.compress(headers))


def headers_frame(compressor: HeaderCompressor, stream_id: int,
                  headers: Mapping[str, list[str]], *, fin: bool = False) -> bytes:
    return control_frame(FrameType.HEADERS, FLAG_FIN if fin else 0,
                         struct.pack(">I", stream_id) + compressor.compress(headers))


def rst_stream(stream_id: int, status: RstStatus) -> bytes:
    return control_frame(FrameType.RST_STREAM, 0, struct.pack(">II", stream_id, status))


def ping(ping_id: int) -> bytes:
    return control_frame(FrameType.PING, 0, struct.pack(">I", ping_id))


def goaway(last_good_id: int, status: GoAwayStatus = GoAwayStatus.OK) -> bytes:
    return control_frame(FrameType.GOAWAY, 0, struct.pack(">II", last_good_id, status))


def window_update(stream_id: int, delta: int) -> bytes:
    return control_frame(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))


def settings(entries: list[tuple[int, int, int]], clear: bool = False) -> bytes:
    body = struct.pack(">I", len(entries)) + b"".join(
        struct.pack(">II", (flags << 24) | ident, value) for flags, ident, value in entries)
    return control_frame(FrameType.SETTINGS, FLAG_CLEAR_SETTINGS if clear else 0, body)


async def read_frame(reader: asyncio.StreamReader, decompressor: HeaderDecompressor
                     ) -> Frame | None:
    """The next frame, or None at a clean end of the connection (between frames)."""
    try:
        head = await reader.readexactly(8)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise ProtocolError("connection ended inside a frame header") from None
    first, second = _HEADER.unpack(head)
    flags, length = second >> 24, second & 0xFFFFFF
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection ended inside a frame") from None
    if not first & 0x80000000:
        return Frame(type=None, flags=flags, stream_id=first & 0x7FFFFFFF, payload=body)
    version = (first >> 16) & 0x7FFF
    kind = first & 0xFFFF
    if version != VERSION:
        raise ProtocolError(f"SPDY version {version} frame; only version {VERSION} is spoken")
    return parse_control(kind, flags, body, decompressor)


def parse_control(kind: int, flags: int, body: bytes, decompressor: HeaderDecompressor
                  ) -> Frame:
    def need(size: int) -> None:
        if len(body) < size:
            raise ProtocolError(f"{_name(kind)} frame of {len(body)} bytes is too short")

    def exactly(size: int) -> None:
        if len(body) != size:
            raise ProtocolError(f"{_name(kind)} frame must be {size} bytes, not {len(body)}")

    if kind == FrameType.SYN_STREAM:
        need(10)
        stream_id, associated, priority = struct.unpack(">IIB", body[:9])
        return Frame(FrameType.SYN_STREAM, flags, stream_id & 0x7FFFFFFF,
                     headers=decompressor.decompress(body[10:]),
                     associated_id=associated & 0x7FFFFFFF, priority=priority >> 5)
    if kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
        need(4)
        (stream_id,) = struct.unpack(">I", body[:4])
        return Frame(FrameType(kind), flags, stream_id & 0x7FFFFFFF,
                     headers=decompressor.decompress(body[4:]))
    if kind == FrameType.RST_STREAM:
        exactly(8)
        stream_id, status = struct.unpack(">II", body)
        return Frame(FrameType.RST_STREAM, flags, stream_id & 0x7FFFFFFF, status=status)
    if kind == FrameType.SETTINGS:
        need(4)
        (count,) = struct.unpack(">I", body[:4])
        exactly(4 + 8 * count)
        entries = []
        for index in range(count):
            word, value = struct.unpack(">II", body[4 + 8 * index:12 + 8 * index])
            entries.append((word >> 24, word & 0xFFFFFF, value))
        return Frame(FrameType.SETTINGS, flags, settings=tuple(entries))
    if kind == FrameType.PING:
        exactly(4)
        return Frame(FrameType.PING, flags, ping_id=struct.unpack(">I", body)[0])
    if kind == FrameType.GOAWAY:
        # SPDY/2 peers send 4 bytes; SPDY/3 adds the status.
        need(4)
        last = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
        status = struct.unpack(">I", body[4:8])[0] if len(body) >= 8 else 0
        return Frame(FrameType.GOAWAY, flags, last, status=status)
    if kind == FrameType.WINDOW_UPDATE:
        exactly(8)
        stream_id, delta = struct.unpack(">II", body)
        return Frame(FrameType.WINDOW_UPDATE, flags, stream_id & 0x7FFFFFFF,
                     delta=delta & 0x7FFFFFFF)
    # The draft: unknown control frames are ignored.
    return Frame(type=kind, flags=flags, payload=body)


def _name(kind: int) -> str:
    try:
        return FrameType(kind).name
    except ValueError:
        return f"type-{kind}"


# The session ---------------------------------------------------------------------------------

_RECEIVE_QUEUE = 64  # data frames buffered per stream before the reader waits


class Stream:
    """One SPDY stream: read the peer's data, write ours, half-close with FIN."""

    def __init__(self, session: Session, stream_id: int, headers: Headers, *,
                 remote_closed: bool = False):
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue(_RECEIVE_QUEUE)
        self._buffer = b""
        self.remote_closed = remote_closed
        self.local_closed = False
        self.reset = False
        self.replied = asyncio.Event()
        if remote_closed:
            self._incoming.put_nowait(None)

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def read(self, limit: int = 65536) -> bytes:
        """Up to ``limit`` bytes; b"" once the peer has finished (FIN) or reset the stream."""
        if not self._buffer:
            chunk = await self._incoming.get()
            if chunk is None:
                self._incoming.put_nowait(None)  # later reads see the end too
                return b""
            self._buffer = chunk
        piece, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return piece

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    async def write(self, data: bytes, fin: bool = False) -> None:
        if self.reset:
            raise StreamReset(f"stream {self.id} was reset")
        if self.local_closed:
            raise StreamReset(f"stream {self.id} is already closed for writing")
        # Every frame of one write goes out in one write and one drain: a drain per 32 KiB
        # frame was a good part of port-forward's time.
        await self.session.send(data_frames(self.id, data, fin))
        if fin:
            self.local_closed = True
            self.session.maybe_forget(self)

    async def close(self) -> None:
        """Half-close: send FIN (an empty data frame) unless already done."""
        if not self.local_closed and not self.reset and not self.session.closed:
            with contextlib.suppress(ConnectionError):
                await self.write(b"", fin=True)

    async def reply(self, headers: Mapping[str, list[str]] | None = None) -> None:
        await self.session.send_headers(
            lambda compressor: syn_reply(compressor, self.id, headers or {}))
        self.replied.set()

    async def send_reset(self, status: RstStatus = RstStatus.CANCEL) -> None:
        if not self.reset:
            self._mark_reset()
            with contextlib.suppress(ConnectionError):
                await self.session.send(rst_stream(self.id, status))

    def _mark_reset(self) -> None:
        self.reset = True
        self.local_closed = True
        self._finish_remote()
        self.session.maybe_forget(self)

    def _finish_remote(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            _put_end(self._incoming)


def _put_end(queue: asyncio.Queue[bytes | None]) -> None:
    """Mark the end of a stream's data even if its buffer is full."""
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            # The reader is gone or slow; what it has not read is of no use after a reset.
            queue.get_nowait()


class Session:
    """A SPDY/3.1 session over a connection, as the server (even ids) or the client (odd)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 server: bool):
        self.reader = reader
        self.writer = writer
        self.server = server
        self.streams: dict[int, Stream] = {}
        self.incoming: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self._write_lock = asyncio.Lock()
        self._last_peer_id = 0
        self._next_id = 2 if server else 1
        self._next_ping = 2 if server else 1
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.closed = False
        self.goaway_received = False
        self.done = asyncio.Event()

    # Sending -------------------------------------------------------------------------------

    async def send(self, frame: bytes | bytearray) -> None:
        if self.closed:
            raise ConnectionResetError("the SPDY session is closed")
        async with self._write_lock:
            self.writer.write(frame)
            await self.writer.drain()

    async def send_headers(self, build: Callable[[HeaderCompressor], bytes]) -> None:
        """Compress and write under one lock: the zlib stream must match the wire order."""
        if self.closed:
            raise ConnectionResetError("the SPDY session is closed")
        async with self._write_lock:
            frame = build(self._compressor)
            self.writer.write(frame)
            await self.writer.drain()

    async def open_stream(self, headers: Mapping[str, list[str]], *, fin: bool = False
                          ) -> Stream:
        """Start a stream of our own (SYN_STREAM); a client waits for the reply itself."""
        stream_id = self._next_id
        self._next_id += 2
        stream = Stream(self, stream_id, dict(headers))
        if fin:
            stream.local_closed = True
        self.streams[stream_id] = stream
        await self.send_headers(lambda compressor: syn_stream(compressor, stream_id, headers,
                                                              fin=fin))
        return stream

    async def ping(self, seconds: float = 10.0) -> None:
        ping_id = self._next_ping
        self._next_ping += 2
        waiter = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = waiter
        try:
            await self.send(ping(ping_id))
            await asyncio.wait_for(waiter, seconds)
        finally:
            self._pings.pop(ping_id, None)

    async def accept(self) -> Stream | None:
        """The next stream the peer opened, or None when the session has ended."""
        stream = await self.incoming.get()
        if stream is None:
            self.incoming.put_nowait(None)
        return stream

    async def close(self, status: GoAwayStatus = GoAwayStatus.OK) -> None:
        """GOAWAY, then close the connection; every stream ends."""
        if self.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send(goaway(self._last_peer_id, status))
        self._shutdown()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()

    def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.reset = True
            stream._finish_remote()
        self.streams.clear()
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the SPDY session ended"))
        self.incoming.put_nowait(None)
        self.writer.close()
        self.done.set()

    def maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)

    # Receiving -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and dispatch frames until the connection ends or the peer breaks the rules."""
        try:
            while not self.closed:
                frame = await read_frame(self.reader, self._decompressor)
                if frame is None:
                    break
                try:
                    await self._dispatch(frame)
                except StreamError as error:
                    log.debug("SPDY stream %d reset: %s", error.stream_id, error)
                    stream = self.streams.get(error.stream_id)
                    if stream is not None:
                        stream._mark_reset()
                    await self.send(rst_stream(error.stream_id, error.status))
        except ProtocolError as error:
            log.info("SPDY peer broke the protocol: %s", error)
            await self.close(GoAwayStatus.PROTOCOL_ERROR)
        except (ConnectionError, OSError) as error:
            log.debug("SPDY connection ended: %s", error)
        finally:
            self._shutdown()

    def _own(self, stream_id: int) -> bool:
        return (stream_id % 2 == 0) == self.server

    async def _dispatch(self, frame: Frame) -> None:
        if frame.type is None:
            await self._on_data(frame)
        elif frame.type == FrameType.SYN_STREAM:
            self._on_syn_stream(frame)
        elif frame.type == FrameType.SYN_REPLY:
            stream = self._known(frame.stream_id, "SYN_REPLY")
            if stream.replied.is_set():
                raise StreamError(frame.stream_id, RstStatus.STREAM_IN_USE,
                                  "second SYN_REPLY")
            stream.headers.update(frame.headers)
            stream.replied.set()
            if frame.flags & FLAG_FIN:
                await self._remote_fin(stream)
        elif frame.type == FrameType.HEADERS:
            stream = self._known(frame.stream_id, "HEADERS")
            stream.headers.update(frame.headers)
            if frame.flags & FLAG_FIN:
                await self._remote_fin(stream)
        elif frame.type == FrameType.RST_STREAM:
            found = self.streams.get(frame.stream_id)
            if found is not None:
                found._mark_reset()
                found.replied.set()
        elif frame.type == FrameType.PING:
            if self._own(frame.ping_id):
                waiter = self._pings.get(frame.ping_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            else:
                await self.send(ping(frame.ping_id))
        elif frame.type == FrameType.GOAWAY:
            self.goaway_received = True
        # SETTINGS, WINDOW_UPDATE and unknown control frames need no action (see the top).

    def _on_syn_stream(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if stream_id == 0:
            raise ProtocolError("SYN_STREAM with stream id 0")
        if self._own(stream_id):
            raise ProtocolError(f"peer opened stream {stream_id}, an id of ours")
        if stream_id in self.streams:
            raise StreamError(stream_id, RstStatus.PROTOCOL_ERROR,
                              f"stream {stream_id} opened twice")
        if stream_id <= self._last_peer_id:
            raise ProtocolError(f"stream id {stream_id} does not increase")
        self._last_peer_id = stream_id
        if self.goaway_received or self.closed:
            raise StreamError(stream_id, RstStatus.REFUSED_STREAM, "session is going away")
        stream = Stream(self, stream_id, frame.headers,
                        remote_closed=bool(frame.flags & FLAG_FIN))
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        self.streams[stream_id] = stream
        self.incoming.put_nowait(stream)

    def _known(self, stream_id: int, what: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamError(stream_id, RstStatus.INVALID_STREAM,
                              f"{what} for unknown stream {stream_id}")
        return stream

    async def _on_data(self, frame: Frame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None and self._was_open(frame.stream_id):
            return  # in flight when the stream closed or was reset: ignored, as the draft says
        if stream is None:
            raise StreamError(frame.stream_id, RstStatus.INVALID_STREAM,
                              f"data for unknown stream {frame.stream_id}")
        if stream.remote_closed:
            raise StreamError(frame.stream_id, RstStatus.STREAM_ALREADY_CLOSED,
                              f"data after FIN on stream {frame.stream_id}")
        if frame.payload and not stream.reset:
            await stream._incoming.put(frame.payload)
        if frame.flags & FLAG_FIN:
            await self._remote_fin(stream)

    def _was_open(self, stream_id: int) -> bool:
        if self._own(stream_id):
            return 0 < stream_id < self._next_id
        return 0 < stream_id <= self._last_peer_id

    async def _remote_fin(self, stream: Stream) -> None:
        if not stream.remote_closed:
            stream.remote_closed = True
            await stream._incoming.put(None)  # after the data still buffered, never instead
        self.maybe_forget(stream)
