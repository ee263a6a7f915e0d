"""The content store: blobs verified while written, visible only when complete."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest

from crisp.images.content import ContentStore, DigestMismatch, IngestInterrupted, IngestReader


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    content = ContentStore(tmp_path)
    content.setup()
    return content


async def test_ingest_in_chunks_then_commit(store: ContentStore) -> None:
    data = b"x" * (3 << 20) + b"tail"
    ingest = await store.begin(digest(data), len(data))
    for start in range(0, len(data), 700_000):
        await ingest.write(data[start:start + 700_000])
        assert not store.has(digest(data))  # nothing visible before commit
    path = await ingest.commit()
    assert path.read_bytes() == data
    assert list(store.ingest_dir.iterdir()) == []


async def test_wrong_content_is_refused_and_removed(store: ContentStore) -> None:
    claimed = digest(b"right")
    ingest = await store.begin(claimed, 5)
    await ingest.write(b"wrong")
    with pytest.raises(DigestMismatch, match="wrong content"):
        await ingest.commit()
    assert not store.has(claimed)
    assert list(store.ingest_dir.iterdir()) == []


async def test_size_is_checked_while_streaming(store: ContentStore) -> None:
    ingest = await store.begin(digest(b"abc"), 2)
    with pytest.raises(DigestMismatch, match="larger"):
        await ingest.write(b"abc")
    await ingest.abort()
    short = await store.begin(digest(b"abc"), 4)
    await short.write(b"abc")
    with pytest.raises(DigestMismatch, match="expected 4"):
        await short.commit()


async def test_resume_rehashes_what_is_there(store: ContentStore) -> None:
    data = b"0123456789" * 1000
    first = await store.begin(digest(data), len(data))
    await first.write(data[:4000])
    await first.flush()
    resumed = await store.begin(digest(data), len(data), resume=True)
    assert resumed.written == 4000
    await resumed.write(data[4000:])
    assert (await resumed.commit()).read_bytes() == data


async def test_restart_discards_partial_data(store: ContentStore) -> None:
    data = b"abcdef"
    ingest = await store.begin(digest(data), len(data))
    await ingest.write(b"junk")
    await ingest.restart()
    await ingest.write(data)
    assert (await ingest.commit()).read_bytes() == data


def test_put_file_names_or_verifies(store: ContentStore) -> None:
    named, size = store.put_file_blocking(io.BytesIO(b"payload"))
    assert (named, size) == (digest(b"payload"), 7)
    with pytest.raises(DigestMismatch):
        store.put_file_blocking(io.BytesIO(b"payload"), digest(b"other"))
    assert list(store.ingest_dir.iterdir()) == []


def test_setup_drops_interrupted_downloads(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.setup()
    (store.ingest_dir / "leftover").write_bytes(b"half")
    ContentStore(tmp_path).setup()
    assert list(store.ingest_dir.iterdir()) == []


async def read_in_thread(reader: IngestReader, out: bytearray) -> None:
    """Read ``reader`` to its end in a thread, as the layer unpack does."""
    def run() -> None:
        while chunk := reader.read(1000):
            out.extend(chunk)
    await asyncio.to_thread(run)


async def test_follower_reads_while_writing_and_ends_only_when_verified(
        store: ContentStore) -> None:
    data = bytes(range(256)) * 20_000  # several flushes of the 1 MiB write buffer
    ingest = await store.begin(digest(data), len(data))
    reader = ingest.follow()
    got = bytearray()
    reading = asyncio.create_task(read_in_thread(reader, got))
    for start in range(0, len(data), 300_000):
        await ingest.write(data[start:start + 300_000])
    await ingest.flush()
    await asyncio.sleep(0.2)
    assert not reading.done()  # every byte is there, but the end waits for the verification
    assert len(got) == len(data)
    await ingest.commit()
    await asyncio.wait_for(reading, 5)
    assert bytes(got) == data
    reader.close()


async def test_follower_refuses_a_blob_that_does_not_verify(store: ContentStore) -> None:
    claimed = digest(b"right")
    ingest = await store.begin(claimed, 5)
    reader = ingest.follow()
    got = bytearray()
    reading = asyncio.create_task(read_in_thread(reader, got))
    await ingest.write(b"wrong")
    with pytest.raises(DigestMismatch):
        await ingest.commit()
    with pytest.raises(IngestInterrupted, match="ended unverified"):
        await asyncio.wait_for(reading, 5)
    reader.close()


@pytest.mark.parametrize("how", ["abort", "close", "restart"])
async def test_follower_is_interrupted_when_the_download_stops_or_starts_over(
        store: ContentStore, how: str) -> None:
    data = b"x" * (2 << 20)
    ingest = await store.begin(digest(data), len(data))
    reader = ingest.follow()
    reading = asyncio.create_task(read_in_thread(reader, bytearray()))
    await ingest.write(data[:1 << 20])
    await ingest.flush()
    await getattr(ingest, how)()
    with pytest.raises(IngestInterrupted):
        await asyncio.wait_for(reading, 5)
    reader.close()


async def test_follower_of_a_resumed_download_reads_the_partial_first(
        store: ContentStore) -> None:
    data = b"0123456789" * 200_000
    first = await store.begin(digest(data), len(data))
    await first.write(data[:1_500_000])
    await first.close()
    resumed = await store.begin(digest(data), len(data), resume=True)
    reader = resumed.follow()
    got = bytearray()
    reading = asyncio.create_task(read_in_thread(reader, got))
    await resumed.write(data[1_500_000:])
    await resumed.commit()
    await asyncio.wait_for(reading, 5)
    assert bytes(got) == data
    reader.close()
