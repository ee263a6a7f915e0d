"""SPDY/3.1 framing rules and the session, over a real socket pair."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from crisp.streaming import spdy


def test_dictionary_is_the_drafts_1423_bytes() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\0\0\0\x07options\0\0\0\x04head")
    assert spdy.DICTIONARY.endswith(b"utf-,*,enq=0.")
    assert b"\0\0\0\x06origin100101201" in spdy.DICTIONARY


def test_compressed_blocks_name_the_dictionary_and_continue_one_stream() -> None:
    compressor = spdy.HeaderCompressor()
    first = compressor.compress({"streamtype": ["stdout"]})
    # zlib header with FDICT set, then the DICTID: Adler-32 of the dictionary.
    assert first[1] & 0x20
    assert struct.unpack(">I", first[2:6])[0] == zlib.adler32(spdy.DICTIONARY)
    second = compressor.compress({"streamtype": ["stderr"], "port": ["80", "81"]})
    decompressor = spdy.HeaderDecompressor()
    assert decompressor.decompress(first) == {"streamtype": ["stdout"]}
    assert decompressor.decompress(second) == {"streamtype": ["stderr"], "port": ["80", "81"]}
    # A block out of its stream cannot be read by a fresh decompressor.
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderDecompressor().decompress(second)


def test_header_block_layout_and_rules() -> None:
    raw = spdy.encode_header_block({"Stream-Type": "error", "v": ["a", "b"]})
    assert raw == (b"\0\0\0\x02" b"\0\0\0\x0bstream-type" b"\0\0\0\x05error"
                   b"\0\0\0\x01v" b"\0\0\0\x03a\0b")
    assert spdy.decode_header_block(raw) == {"stream-type": ["error"], "v": ["a", "b"]}
    upper = b"\0\0\0\x01" b"\0\0\0\x01A" b"\0\0\0\x00"
    empty = b"\0\0\0\x01" b"\0\0\0\x00" b"\0\0\0\x00"
    twice = b"\0\0\0\x02" + (b"\0\0\0\x01a" b"\0\0\0\x00") * 2
    for bad in (upper, empty, twice, raw[:-1], raw + b"x"):
        with pytest.raises(spdy.ProtocolError):
            spdy.decode_header_block(bad)


def test_data_frames_split_at_the_chunk_size_with_fin_on_the_last() -> None:
    chunk = spdy.DATA_CHUNK
    data = bytes(range(256)) * (chunk // 128 + 1)  # two full frames and a part
    frames = bytes(spdy.data_frames(3, data, fin=True))
    expected = b"".join(spdy.data_frame(3, data[start:start + chunk],
                                        fin=start + chunk >= len(data))
                        for start in range(0, len(data), chunk))
    assert frames == expected
    assert bytes(spdy.data_frames(3, data[:chunk])) == spdy.data_frame(3, data[:chunk])
    assert bytes(spdy.data_frames(3, b"", fin=True)) == spdy.data_frame(3, b"", fin=True)
    assert bytes(spdy.data_frames(3, memoryview(b"ab"))) == spdy.data_frame(3, b"ab")


def test_frame_layouts() -> None:
    assert spdy.data_frame(5, b"hi", fin=True) == b"\0\0\0\x05\x01\0\0\x02hi"
    assert spdy.ping(7) == b"\x80\x03\0\x06\0\0\0\x04\0\0\0\x07"
    assert spdy.rst_stream(3, spdy.RstStatus.CANCEL) == (
        b"\x80\x03\0\x03\0\0\0\x08\0\0\0\x03\0\0\0\x05")
    assert spdy.goaway(9) == b"\x80\x03\0\x07\0\0\0\x08\0\0\0\x09\0\0\0\0"
    assert spdy.window_update(1, 1000) == b"\x80\x03\0\x09\0\0\0\x08\0\0\0\x01\0\0\x03\xe8"
    entries = [(0, 7, 65536)]
    assert spdy.settings(entries) == b"\x80\x03\0\x04\0\0\0\x0c\0\0\0\x01\0\0\0\x07\0\x01\0\0"
    decompressor = spdy.HeaderDecompressor()
    frame = spdy.syn_stream(spdy.HeaderCompressor(), 3, {"a": ["b"]}, fin=True, priority=2)
    assert frame[:5] == b"\x80\x03\0\x01\x01"
    parsed = spdy.parse_control(1, 1, frame[8:], decompressor)
    assert (parsed.stream_id, parsed.priority, parsed.headers) == (3, 2, {"a": ["b"]})
    parsed = spdy.parse_control(4, 0, spdy.settings(entries)[8:], decompressor)
    assert parsed.settings == ((0, 7, 65536),)
    with pytest.raises(spdy.ProtocolError):
        spdy.parse_control(6, 0, b"\0\0\0", decompressor)  # PING is exactly 4 bytes
    with pytest.raises(spdy.ProtocolError):
        spdy.parse_control(3, 0, b"\0" * 12, decompressor)  # RST_STREAM is exactly 8
    assert spdy.parse_control(42, 0, b"xyz", decompressor).type == 42  # unknown: ignored


@dataclass
class Peer:
    """The raw side of a socket pair: writes frames by hand and reads what the session sent."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    compressor: spdy.HeaderCompressor
    decompressor: spdy.HeaderDecompressor

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def frame(self) -> spdy.Frame | None:
        return await asyncio.wait_for(spdy.read_frame(self.reader, self.decompressor), 5)

    async def syn(self, stream_id: int, headers: dict[str, list[str]], fin: bool = False
                  ) -> None:
        await self.send(spdy.syn_stream(self.compressor, stream_id, headers, fin=fin))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[spdy.Session, Peer]]:
    left, right = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=left)
    peer_reader, peer_writer = await asyncio.open_connection(sock=right)
    session = spdy.Session(server_reader, server_writer, server=True)
    runner = asyncio.create_task(session.run())
    yield session, Peer(peer_reader, peer_writer, spdy.HeaderCompressor(),
                        spdy.HeaderDecompressor())
    peer_writer.close()
    await asyncio.wait_for(runner, 5)


async def test_streams_carry_data_both_ways_and_fin_ends_reads(
        pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.syn(1, {"streamtype": ["stdin"]})
    stream = await session.accept()
    assert stream is not None and stream.header("streamType") == "stdin"
    await stream.reply()
    reply = await peer.frame()
    assert reply is not None and reply.type == spdy.FrameType.SYN_REPLY and reply.stream_id == 1
    await peer.send(spdy.data_frame(1, b"hello "))
    await peer.send(spdy.data_frame(1, b"world", fin=True))
    assert await stream.read_all() == b"hello world"
    assert await stream.read() == b""
    big = bytes(range(256)) * 1024  # split into DATA_CHUNK frames
    await stream.write(big, fin=True)
    received = b""
    while True:
        frame = await peer.frame()
        assert frame is not None and frame.type is None
        assert len(frame.payload) <= spdy.DATA_CHUNK
        received += frame.payload
        if frame.flags & spdy.FLAG_FIN:
            break
    assert received == big
    assert 1 not in session.streams  # closed both ways: forgotten


async def test_pings_are_echoed_and_our_own_are_answered(pair: tuple[spdy.Session, Peer]
                                                         ) -> None:
    session, peer = pair
    await peer.send(spdy.ping(1))
    echoed = await peer.frame()
    assert echoed is not None and echoed.type == spdy.FrameType.PING and echoed.ping_id == 1
    waiting = asyncio.create_task(session.ping())
    ours = await peer.frame()
    assert ours is not None and ours.ping_id % 2 == 0  # a server's pings are even
    await peer.send(spdy.ping(ours.ping_id))
    await asyncio.wait_for(waiting, 5)


async def test_data_for_an_unknown_stream_is_reset(pair: tuple[spdy.Session, Peer]) -> None:
    _, peer = pair
    await peer.send(spdy.data_frame(5, b"x"))
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.RST_STREAM
    assert (frame.stream_id, frame.status) == (5, spdy.RstStatus.INVALID_STREAM)


async def test_data_after_fin_is_reset(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.syn(1, {"streamtype": ["stdin"]}, fin=True)
    assert await session.accept() is not None
    await peer.send(spdy.data_frame(1, b"late"))
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.RST_STREAM
    assert frame.status == spdy.RstStatus.STREAM_ALREADY_CLOSED


async def test_reset_by_the_peer_ends_reads_and_refuses_writes(
        pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.syn(1, {"streamtype": ["stdout"]})
    stream = await session.accept()
    assert stream is not None
    await peer.send(spdy.rst_stream(1, spdy.RstStatus.CANCEL))
    assert await asyncio.wait_for(stream.read(), 5) == b""
    with pytest.raises(spdy.StreamReset):
        await stream.write(b"x")
    await peer.send(spdy.data_frame(1, b"in flight"))  # ignored after a reset, no RST back
    await peer.send(spdy.ping(3))
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.PING


@pytest.mark.parametrize("stream_id", [2, 0])
async def test_stream_ids_of_the_wrong_parity_or_zero_end_the_session(
        pair: tuple[spdy.Session, Peer], stream_id: int) -> None:
    session, peer = pair
    await peer.syn(stream_id, {})
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.GOAWAY
    assert frame.status == spdy.GoAwayStatus.PROTOCOL_ERROR
    assert await session.accept() is None


async def test_decreasing_stream_ids_and_other_versions_end_the_session(
        pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.syn(5, {})
    assert await session.accept() is not None
    await peer.syn(3, {})
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.GOAWAY
    assert await session.accept() is None


async def test_spdy2_frames_end_the_session(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.send(b"\x80\x02\0\x06\0\0\0\x04\0\0\0\x01")
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.GOAWAY
    assert frame.status == spdy.GoAwayStatus.PROTOCOL_ERROR
    assert session.closed


async def test_settings_window_updates_and_unknown_frames_are_ignored(
        pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    await peer.send(spdy.settings([(0, 7, 1)]))
    await peer.send(spdy.window_update(0, 5))
    await peer.send(spdy.control_frame(42, 0, b"whatever"))  # type: ignore[arg-type]
    await peer.send(spdy.ping(1))
    frame = await peer.frame()
    assert frame is not None and frame.type == spdy.FrameType.PING
    # A window of 1 byte is not enforced: spdystream peers never send WINDOW_UPDATE.
    await peer.syn(1, {})
    stream = await session.accept()
    assert stream is not None
    await asyncio.wait_for(stream.write(b"x" * 100_000), 5)


async def test_the_end_of_the_connection_ends_every_stream(pair: tuple[spdy.Session, Peer]
                                                           ) -> None:
    session, peer = pair
    await peer.syn(1, {})
    stream = await session.accept()
    assert stream is not None
    peer.writer.close()
    assert await asyncio.wait_for(stream.read(), 5) == b""
    await asyncio.wait_for(session.done.wait(), 5)
    assert await session.accept() is None


async def test_a_client_session_opens_odd_streams() -> None:
    left, right = socket.socketpair()
    server = spdy.Session(*await asyncio.open_connection(sock=left), server=True)
    client = spdy.Session(*await asyncio.open_connection(sock=right), server=False)
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
    opened = await client.open_stream({"streamtype": ["stdin"]})
    assert opened.id == 1
    accepted = await server.accept()
    assert accepted is not None
    await accepted.reply({"x": ["y"]})
    await asyncio.wait_for(opened.replied.wait(), 5)
    await opened.write(b"ping", fin=True)
    assert await accepted.read_all() == b"ping"
    await accepted.write(b"pong", fin=True)
    assert await opened.read_all() == b"pong"
    await client.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert server.closed


async def test_one_write_is_one_drain_however_many_frames(pair: tuple[spdy.Session, Peer]
                                                           ) -> None:
    session, peer = pair
    await peer.syn(1, {"streamtype": ["stdout"]})
    stream = await session.accept()
    assert stream is not None
    drains = 0
    drain = session.writer.drain

    async def counted() -> None:
        nonlocal drains
        drains += 1
        await drain()

    session.writer.drain = counted  # type: ignore[method-assign]
    big = b"x" * (8 * spdy.DATA_CHUNK + 1)
    await stream.write(big)
    assert drains == 1
    received = b""
    while len(received) < len(big):
        frame = await peer.frame()
        assert frame is not None and frame.type is None and len(frame.payload) <= spdy.DATA_CHUNK
        received += frame.payload
    assert received == big
