"""The registry helper's wire format: frames survive the pipe, errors keep their gRPC class."""

from __future__ import annotations

import asyncio

import pytest

from crisp.errors import InvalidArgument, NotFound, Unauthenticated
from crisp.images.content import DigestMismatch
from crisp.images.fetcher import (
    DATA,
    ERROR,
    HEADER,
    MAX_FRAME,
    RESULT,
    ProtocolError,
    encode,
    error_from,
    error_name,
    read_frame,
)


async def frames(data: bytes, count: int) -> list[tuple[int, int, dict[str, object], bytes]]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return [await read_frame(reader) for _ in range(count)]


async def test_frames_round_trip_in_order() -> None:
    data = (encode(7, DATA, raw=b"\0chunk\xff") + encode(7, RESULT, {"digest": "sha256:x"}, b"{}")
            + encode(9, ERROR, {"error": "NotFound", "message": "gone"}))
    assert await frames(data, 3) == [
        (7, DATA, {}, b"\0chunk\xff"),
        (7, RESULT, {"digest": "sha256:x"}, b"{}"),
        (9, ERROR, {"error": "NotFound", "message": "gone"}, b""),
    ]


async def test_the_end_of_the_pipe_and_garbage_are_told_apart() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await frames(encode(1, DATA, raw=b"abc")[:-1], 1)
    with pytest.raises(ProtocolError):
        await frames(HEADER.pack(1, DATA, 0, MAX_FRAME + 1), 1)


@pytest.mark.parametrize(("error", "raised"), [
    (Unauthenticated("401"), Unauthenticated),
    (NotFound("404"), NotFound),
    (DigestMismatch("bad"), InvalidArgument),  # a subclass travels as its crisp.errors class
])
def test_errors_cross_as_their_crisp_errors_class(error: Exception, raised: type) -> None:
    name = error_name(error)  # type: ignore[arg-type]
    again = error_from({"error": name, "message": str(error)})
    assert type(again) is raised and str(again) == str(error)


def test_an_unknown_error_stays_a_bug() -> None:
    again = error_from({"error": "", "message": "KeyError: 'x'"})
    assert type(again) is RuntimeError and "KeyError" in str(again)
    assert type(error_from({"error": "Path", "message": "m"})) is RuntimeError
