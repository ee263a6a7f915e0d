"""crisp.digest's SHA-256 (CPython's own, for short names) is the SHA-256 hashlib computes."""

from __future__ import annotations

import hashlib

from crisp.digest import sha256


def test_same_digests_as_hashlib() -> None:
    for data in (b"", b"sha256:abc sha256:def", bytes(range(256)) * 5):
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        assert sha256(data).digest() == hashlib.sha256(data).digest()
