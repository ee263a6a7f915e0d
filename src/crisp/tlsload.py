"""OpenSSL only once the daemon speaks TLS: asyncio's own ``import ssl`` costs 4.4 MiB RSS.

asyncio's base_events, selector_events and sslproto import ssl when they load and keep the
module (None if the import failed) in a global; sslproto also derives ``SSLAgainErrors`` from
it. An idle daemon speaks no TLS (CRI is a unix socket), so :func:`import_asyncio_without_ssl`
imports asyncio with ssl unavailable, and ssl loads for real on the first TLS use: a registry
pull, the streaming server (aiohttp imports it). Whichever ``import ssl`` runs first, a finder
on ``sys.meta_path`` hands the module to asyncio's globals as it loads, so asyncio never holds
None while ssl is there and no TLS path has a call to forget: modules the daemon loads at
start-up import ssl inside the function that builds a context, the others at their top.
aiohttp is never patched: it keeps ``ssl = None`` and derives exception tuples and default
contexts when it cannot import ssl, so it must (and does) always import it for real; nothing
imports aiohttp while ssl is blocked.

Measured (smaps_rollup, a probe importing asyncio): 19.4 MiB Rss with ssl, 15.0 without;
``OPENSSL_CONF=/dev/null`` changes nothing (the cost is libcrypto's pages and its start-up,
not the config file).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

# The asyncio modules (Python 3.11 to 3.13) that bind ``ssl`` when they are imported.
ASYNCIO_SSL_USERS = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def import_asyncio_without_ssl() -> bool:
    """Import asyncio with ssl unavailable; False if asyncio or ssl is already loaded.

    Call it before anything imports asyncio, in the daemon only (a client process loses
    nothing by loading ssl and gains no finder it does not need).
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` fail
    try:
        import asyncio
        import asyncio.sslproto  # noqa: F401
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _HandSSLToAsyncio())
    return True


def _hand_to_asyncio(ssl: ModuleType) -> None:
    for name in ASYNCIO_SSL_USERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", ssl) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None and not hasattr(sslproto, "SSLAgainErrors"):
        sslproto.SSLAgainErrors = (  # type: ignore[attr-defined]
            ssl.SSLWantReadError, ssl.SSLSyscallError)


class _HandSSLToAsyncio:
    """Finds ssl as the import system would, and hands the module to asyncio once it ran.

    Duck-typed, as the import system takes it: importlib.abc costs 0.9 MiB. Patching after
    the fact would be simpler but needs a call on every TLS path; a path
    without one (aiohttp's connector making its own default context) would fail with
    asyncio's "stdlib ssl module not available" only when it first runs.
    """

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "ssl":
            return None
        sys.meta_path.remove(self)  # ssl loads once; the finder has no more work
        for finder in sys.meta_path:  # as the import system looks
            find = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenHand(spec.loader)  # type: ignore[assignment]
                return spec
        return None


class _ThenHand:
    """ssl's own loader, then :func:`_hand_to_asyncio`."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _hand_to_asyncio(module)
        module.__loader__ = self.loader  # no trace left of this wrapper
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
