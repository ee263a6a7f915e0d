"""``crisp registry-helper``: the registry client of pulls, in a process of its own.

The daemon (:mod:`crisp.images.fetcher`) starts it on a pull, writes requests to its stdin and
reads the answers from its stdout; the wire format is described there. Each request runs
:class:`crisp.images.registry.RepositoryClient` unchanged; a blob's bytes go to a
:class:`_PipeSink` instead of an Ingest, and the daemon writes them to its ingest. The helper
ends when its stdin does: the daemon stopped it (idle, or crisp stops) or died.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pickle
import signal
import stat
import sys
from typing import Any

from crisp import logsetup
from crisp.config import Config, LiveConfig
from crisp.errors import CrispError, InvalidArgument
from crisp.images.auth import Credentials
from crisp.images.fetcher import (
    BLOB,
    CANCEL,
    CONFIG,
    DATA,
    DONE,
    ERROR,
    MANIFEST,
    RESTART,
    RESULT,
    encode,
    error_name,
    read_frame,
)
from crisp.images.manifest import Descriptor
from crisp.images.reference import Reference
from crisp.images.registry import RegistryClient, RepositoryClient

log = logging.getLogger(__name__)

REPOSITORY_TTL = 600.0  # a pull's RepositoryClient is dropped this long after its last request


class _PipeSink:
    """What RepositoryClient.fetch_blob writes to: each chunk goes to the daemon's ingest."""

    def __init__(self, server: _Server, request: int, written: int):
        self._server = server
        self._request = request
        self._written = written

    @property
    def written(self) -> int:
        return self._written

    async def write(self, chunk: bytes) -> None:
        await self._server.send(self._request, DATA, raw=chunk)
        self._written += len(chunk)

    async def restart(self) -> None:
        await self._server.send(self._request, RESTART)
        self._written = 0


class _Server:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.live: LiveConfig | None = None
        self.client: RegistryClient | None = None
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.repositories: dict[int, tuple[RepositoryClient, float]] = {}

    async def send(self, request: int, kind: int, meta: dict[str, Any] | None = None,
                   raw: bytes = b"") -> None:
        self.writer.write(encode(request, kind, meta, raw))
        await self.writer.drain()  # the pipe is full: the daemon's ingest is behind

    async def run(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    request, kind, meta, raw = await read_frame(reader)
                except asyncio.IncompleteReadError:
                    return  # the daemon stopped us, or is gone
                if kind == CONFIG:
                    self._configure(pickle.loads(raw))
                elif kind == CANCEL:
                    task = self.tasks.get(request)
                    if task is not None:
                        task.cancel()
                elif kind in (MANIFEST, BLOB):
                    task = asyncio.create_task(self._answer(request, kind, meta))
                    self.tasks[request] = task
                    task.add_done_callback(functools.partial(self._done, request))
                else:
                    log.warning("unknown registry helper request kind %d", kind)
        finally:
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            if self.client is not None:
                await self.client.close()

    def _done(self, request: int, task: asyncio.Task[None]) -> None:
        self.tasks.pop(request, None)
        if not task.cancelled() and task.exception() is not None:
            log.debug("answering request %d failed: %s", request, task.exception())

    def _configure(self, config: Config) -> None:
        logsetup.configure(config.log_level, config.log_format)
        if self.live is None:
            self.live = LiveConfig(config, None)
            self.client = RegistryClient(self.live)
        else:
            self.live.current = config

    def _repository(self, number: int, meta: dict[str, Any]) -> RepositoryClient:
        """The RepositoryClient of one pull: its endpoints that failed stay skipped."""
        if self.client is None:
            raise InvalidArgument("the registry helper got a request before its config")
        now = asyncio.get_running_loop().time()
        self.repositories = {n: entry for n, entry in self.repositories.items()
                             if now - entry[1] < REPOSITORY_TTL}
        entry = self.repositories.get(number)
        if entry is None:
            raw = meta["credentials"]
            credentials = Credentials(**raw) if raw is not None else None
            repository = self.client.repository(Reference(**meta["reference"]), credentials)
        else:
            repository = entry[0]
        self.repositories[number] = (repository, now)
        return repository

    async def _answer(self, request: int, kind: int, meta: dict[str, Any]) -> None:
        try:
            repository = self._repository(int(meta["repository"]), meta)
            if kind == MANIFEST:
                fetched = await repository.fetch_manifest(str(meta["object"]))
                await self.send(request, RESULT,
                                {"media_type": fetched.media_type, "digest": fetched.digest},
                                fetched.data)
                return
            sink = _PipeSink(self, request, int(meta["written"]))
            await repository.fetch_blob(Descriptor(**meta["descriptor"]), sink, _ignore,
                                        float(meta["progress_timeout"]))
            await self.send(request, DONE)
        except CrispError as error:
            await self.send(request, ERROR, {"error": error_name(error), "message": str(error)})
        except Exception as error:  # a bug: logged here, UNKNOWN for the client as before
            log.exception("registry request %d failed", request)
            await self.send(request, ERROR, {"error": "", "message": f"{type(error).__name__}: "
                                                                     f"{error}"})


def _ignore(_: int) -> None:
    """Progress is counted where the bytes are written: in the daemon."""


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(0, "rb", buffering=0))
    # the answers get fd 1's pipe to themselves: anything printed goes to stderr instead
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        await _Server(writer).run(reader)
    finally:
        transport.close()


def main() -> int:
    """Serve the daemon on stdin/stdout until stdin ends."""
    if not all(stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)
               for fd in (0, 1)):
        print("crisp registry-helper is started by the crisp daemon for pulls; it speaks a "
              "binary protocol on pipes and is not for interactive use", file=sys.stderr)
        return 2
    # a ^C or hangup at the daemon's terminal is for the daemon: the helper ends with its stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    asyncio.run(_serve())
    return 0
