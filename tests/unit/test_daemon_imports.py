"""The daemon at start-up loads only what serving CRI needs: the rest costs RSS for good.

A subprocess imports what ``crisp`` (the daemon command) imports before it serves, checks a
request the way every RPC is checked, and prints ``sys.modules``. Each module named here
was once loaded that way and held memory no idle daemon uses.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.daemon import checkout_env

# module -> the MiB it holds once imported (measured with smaps_rollup) and where it belongs
NOT_AT_START = {
    "aiohttp": "10 MiB; the streaming server loads it when used (pulls: the registry helper)",
    "crisp.images.registry": "the registry client: only when a pull happens",
    "crisp.images.pull": "the registry client: only when a pull happens",
    "crisp.storage.unpack": "tarfile and gzip: only where layers unpack",
    "tarfile": "only where layers unpack",
    "google.protobuf.descriptor_pb2": "3 MiB; descriptor options are never needed to serve",
    "google.protobuf.json_format": "crispctl's output only",
    "prometheus_client": "several MiB; only when metrics are enabled",
    "crisp.server.metrics": "only when metrics are enabled",
    "crisp.streaming.server": "the streaming server starts on the first exec/attach",
    "crisp.cli.doctor": "the doctor subcommand only",
    "crisp.cli.client": "crispctl only",
    "http.client": "pulled in by aiohttp and urllib only",
    "email.parser": "pulled in by aiohttp and urllib only",
    "yaml": "never in the daemon",
    "decimal": "0.4 MiB; quantities parse with whole numbers",
    "tracemalloc": "0.4 MiB; only when PYTHONTRACEMALLOC asks for the heap breakdown",
    "platform": "0.2 MiB; os.uname() gives the machine",
    "ssl": "1.1 MiB (4.4 with libcrypto); asyncio gets it on the first TLS use (crisp.tlsload)",
    "_ssl": "libssl: only with ssl",
    "hashlib": "3.5 MiB: OpenSSL's libcrypto; blobs hash when a pull, import or export runs",
    "_hashlib": "libcrypto: only with hashlib",
    "hmac": "imports _hashlib; secrets imports it (ids come from os.urandom)",
    "secrets": "imports hmac",
    "importlib.resources": "0.9 MiB; importlib.abc imports it (crisp.tlsload duck-types)",
}

# What the daemon runs between importing its command and serving, in that order.
PROBE = """
import json, sys
import crisp.cli.daemon
from crisp import tlsload
assert tlsload.import_asyncio_without_ssl()  # as crisp.cli.daemon._daemon does
import crisp.server.app
from crisp.api import cri_pb2
from crisp.server.validation import check_request

request = cri_pb2.RunPodSandboxRequest()
request.config.labels["app"] = "web"
request.config.metadata.name = "pod"
check_request(request)
print(json.dumps(sorted(sys.modules)))
"""


def test_daemon_start_up_leaves_heavy_modules_unloaded() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=checkout_env(), check=True)
    loaded = set(json.loads(done.stdout))
    assert "crisp.server.app" in loaded  # the probe did import the daemon
    assert {name: why for name, why in NOT_AT_START.items() if name in loaded} == {}


def test_the_daemon_imports_asyncio_without_ssl_first() -> None:
    """The probe above repeats the daemon's order; this keeps the daemon to it."""
    import inspect

    from crisp.cli import daemon

    source = inspect.getsource(daemon._daemon)
    assert source.index("tlsload.import_asyncio_without_ssl()") < source.index(
        "from crisp.server.app import")


# the HTTP client stays in the registry helper process (crisp.images.fetcher): importing it
# fails in this probe, so a daemon-side pull module that needed it would fail here
PULL_PROBE = """
import json, sys
for name in ("aiohttp", "crisp.images.registry", "crisp.images.helper"):
    sys.modules[name] = None
import crisp.cli.daemon
import crisp.server.app
from crisp.config import Config, LiveConfig
from crisp.images.fetcher import RegistryHelper
from crisp.images.pull import Puller
from crisp.images.reference import parse_reference

RegistryHelper(LiveConfig(Config(), None)).repository(parse_reference("busybox"), None)
print(json.dumps(sorted(n for n, m in sys.modules.items() if m is not None)))
"""
NOT_IN_A_PULL = ("aiohttp", "multidict", "yarl", "http.client", "crisp.images.registry",
                 "crisp.images.helper")


def test_a_pull_in_the_daemon_leaves_the_http_client_unloaded() -> None:
    done = subprocess.run([sys.executable, "-c", PULL_PROBE], capture_output=True, text=True,
                          env=checkout_env(), check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "crisp.images.pull" in loaded
    assert [name for name in NOT_IN_A_PULL if name in loaded] == []


def test_the_daemon_side_of_pulls_imports_no_tls_or_http_client() -> None:
    """ssl too: a daemon that starts without it (asyncio's import of it blocked) must not
    load it for a pull."""
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "src" / "crisp" / "images"
    for module in ("fetcher.py", "pull.py"):
        tree = ast.parse((source / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert imported & {"ssl", "aiohttp", "crisp.images.registry",
                           "crisp.images.endpoints", "crisp.images.helper"} == set(), module
