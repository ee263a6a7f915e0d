"""SHA-256 of short inputs (link names, chain ids) without loading OpenSSL's libcrypto.

hashlib's sha256 is OpenSSL's: importing hashlib maps libcrypto and initialises it, about
3.5 MiB of an idle daemon's RSS, and every container start names its layers' links by a
hash. CPython's own SHA-256 gives the same digests; it is 8x slower (160 MB/s against 1.3
GB/s here), which is nothing for a few dozen bytes, so blobs and layers still hash with
hashlib and load it only when a pull, import or export runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, cast


class Digest(Protocol):
    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


def _builtin_sha256() -> Callable[[bytes], Digest]:
    for name in ("_sha2", "_sha256"):  # Python 3.12 merged _sha256 into _sha2
        try:
            return cast("Callable[[bytes], Digest]", importlib.import_module(name).sha256)
        except ImportError:
            continue
    import hashlib  # an interpreter built without them: OpenSSL's is as good

    return hashlib.sha256


sha256 = _builtin_sha256()
