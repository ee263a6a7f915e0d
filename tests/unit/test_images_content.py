"""The content store: blobs verified while written, visible only when complete."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from crisp.images.content import ContentStore, DigestMismatch


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
