"""LayerStore: an unpack shared by callers, and one whose stream stops part way."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from pathlib import Path

import pytest

from crisp.state import Database
from crisp.storage import LayerStore, SourceInterrupted
from tests.support.image_builder import LayerBuilder, make_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root")


class StopsPartWay(io.RawIOBase):
    """A download's stream that gives some bytes, waits, then reports that it started over."""

    def __init__(self, data: bytes):
        self.data = data[:len(data) // 2]
        self.release = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.data:
            n = min(len(buffer), len(self.data))
            buffer[:n] = self.data[:n]
            self.data = self.data[n:]
            return n
        self.release.wait(10)
        raise SourceInterrupted("the download started over")


async def test_a_caller_with_the_blob_redoes_an_unpack_whose_stream_stopped(
        tmp_path: Path) -> None:
    layer = make_layer(LayerBuilder().file("data", os.urandom(300_000)))
    blob = tmp_path / "blob"
    blob.write_bytes(layer.data)
    db = await Database.open(tmp_path / "crisp.db")
    try:
        store = LayerStore(tmp_path, db)
        store.setup()
        stream = StopsPartWay(layer.data)
        streamed = asyncio.create_task(store.ensure(layer.diff_id, None, layer.diff_id, stream))
        await asyncio.sleep(0.1)
        # a second pull of the same layer, with the complete blob, joins the unpack in flight
        joined = asyncio.create_task(store.ensure(layer.diff_id, None, layer.diff_id, blob))
        await asyncio.sleep(0.1)
        stream.release.set()
        with pytest.raises(SourceInterrupted):
            await streamed
        info = await joined  # not the stream's failure: it unpacked the blob itself
        assert info.diff_id == layer.diff_id
        assert (store.directory(layer.diff_id) / "data").stat().st_size == 300_000
        assert [p.name for p in store.root.iterdir() if p.name.startswith("tmp-")] == []
    finally:
        await db.close()
