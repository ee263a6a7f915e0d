"""Registry transport out of the daemon: a short-lived helper process speaks HTTP for pulls.

The registry client (aiohttp with its HTTP parser, multidict, yarl and TLS setup) holds about
13 MiB of RSS once imported, and an import is for good: a daemon that pulled once kept it.
So the daemon never imports it. The first pull starts ``crisp registry-helper``
(:mod:`crisp.images.helper`), which runs :class:`crisp.images.registry.RepositoryClient` as it
is (auth, token cache, mirrors, TLS, plain-HTTP fallback, retries, Range resume) and sends
what it fetches down a pipe. The daemon keeps the rest: content store, hashing, verification,
unpacking while downloading, pull progress. The helper is stopped once no request ran for
``images.registry_helper_idle`` seconds, and the next pull starts another one. It is started
with fork+exec (asyncio's subprocess support), never a bare fork of the gRPC process.

Wire format, both ways over the helper's stdin and stdout: frames of a big-endian header
(request id, kind, JSON length, raw length), then the JSON object, then the raw bytes.
Requests: CONFIG (the daemon's config, pickled, sent before the first request after it
changed), MANIFEST, BLOB (from the ingest's current size) and CANCEL. Answers per request id:
DATA (blob bytes), RESTART (the server ignored Range: the ingest starts over), DONE, RESULT
(a manifest) or ERROR (the name of a :mod:`crisp.errors` class and the message, raised again
here so the client gets the same gRPC code). Requests run concurrently, told apart by id; an
answer that its consumer has not taken yet beyond :data:`MAX_QUEUED` bytes stops the reading,
so the pipe's backpressure reaches the helper and from there its TCP connections.

This module must not import aiohttp, ssl or :mod:`crisp.images.registry`
(tests/unit/test_daemon_imports.py checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import pickle
import signal
import site
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import crisp
from crisp import errors
from crisp.config import Config, LiveConfig
from crisp.errors import CrispError, Unavailable
from crisp.images.auth import Credentials
from crisp.images.manifest import Descriptor, FetchedManifest
from crisp.images.reference import Reference

if TYPE_CHECKING:
    from crisp.images.content import Ingest

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IBII")  # request id, kind, JSON length, raw length
MAX_FRAME = 64 << 20  # a manifest is at most 4 MiB and a chunk far less: more is a broken pipe
MAX_QUEUED = 4 << 20  # answer bytes one request may have waiting before the reading stops
STOP_GRACE = 5.0  # seconds a stopping helper gets after its stdin closed, then SIGKILL

# daemon -> helper
CONFIG, MANIFEST, BLOB, CANCEL = 1, 2, 3, 4
# helper -> daemon
DATA, RESTART, DONE, RESULT, ERROR = 10, 11, 12, 13, 14
FINAL = frozenset({DONE, RESULT, ERROR})


class ProtocolError(Exception):
    """A frame that does not fit the wire format: the other side is not a registry helper."""


class HelperGone(Unavailable):
    """The registry helper process ended while a request of it ran (killed, crashed).

    Like a crash of crisp, it keeps the partial download for the next pull to resume."""


def encode(request: int, kind: int, meta: dict[str, Any] | None = None,
           raw: bytes = b"") -> bytes:
    """One frame."""
    text = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
    return HEADER.pack(request, kind, len(text), len(raw)) + text + raw


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, dict[str, Any], bytes]:
    """The next frame as (request id, kind, JSON object, raw bytes); IncompleteReadError at
    the end of the stream."""
    request, kind, text_size, raw_size = HEADER.unpack(await reader.readexactly(HEADER.size))
    if text_size + raw_size > MAX_FRAME:
        raise ProtocolError(f"a frame of {text_size + raw_size} bytes")
    body = await reader.readexactly(text_size + raw_size)
    if not text_size:
        return request, kind, {}, body
    meta = json.loads(body[:text_size])
    if not isinstance(meta, dict):
        raise ProtocolError("a frame whose JSON is not an object")
    return request, kind, meta, body[text_size:]


def error_name(error: CrispError) -> str:
    """The :mod:`crisp.errors` class ``error`` is an instance of (it sets the gRPC code)."""
    for kind in type(error).__mro__:
        if kind.__module__ == errors.__name__:
            return kind.__name__
    return CrispError.__name__


def error_from(meta: dict[str, Any]) -> Exception:
    """The error an ERROR frame names, to raise in the daemon."""
    kind = getattr(errors, str(meta.get("error", "")), None)
    message = str(meta.get("message", ""))
    if isinstance(kind, type) and issubclass(kind, CrispError):
        return kind(message)
    return RuntimeError(f"the registry helper failed: {message}")  # a bug: UNKNOWN, as before


_Answer = tuple[int, dict[str, Any], bytes]


class _Call:
    """One request to the helper and the frames that answer it, in order."""

    def __init__(self, process: _Process, request: int):
        self.process = process
        self.request = request
        self.answers: asyncio.Queue[_Answer | BaseException] = asyncio.Queue()
        self.queued = 0
        self.room = asyncio.Event()  # cleared while too many answer bytes wait
        self.room.set()
        self.ended = False  # a final answer came, or the helper is gone

    def put(self, answer: _Answer | BaseException) -> None:
        self.answers.put_nowait(answer)
        if not isinstance(answer, BaseException):
            self.queued += len(answer[2])
            if self.queued > MAX_QUEUED:
                self.room.clear()

    async def get(self) -> _Answer:
        """The next answer; an ERROR answer raises its error."""
        answer = await self.answers.get()
        if isinstance(answer, BaseException):
            raise answer
        self.queued -= len(answer[2])
        if self.queued <= MAX_QUEUED:
            self.room.set()
        if answer[0] == ERROR:
            raise error_from(answer[1])
        return answer

    def close(self) -> None:
        """The consumer is done: a request still running is cancelled in the helper."""
        self.room.set()  # the reader may be waiting for this consumer
        if not self.ended:
            self.ended = True
            self.process.cancel(self.request)


class _Process:
    """One running helper process: writes requests, reads and routes its answers."""

    def __init__(self, process: asyncio.subprocess.Process, owner: RegistryHelper):
        self.process = process
        self.owner = owner
        self.pid = process.pid
        self.calls: dict[int, _Call] = {}
        self.config: Config | None = None  # the config last sent
        self.alive = True  # false once it may take no new request (stopping or gone)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.reading = asyncio.create_task(self._read())

    def send(self, request: int, kind: int, meta: dict[str, Any] | None = None,
             raw: bytes = b"") -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.write(encode(request, kind, meta, raw))

    def start_call(self, request: int, kind: int, meta: dict[str, Any],
                   config: Config) -> _Call:
        if self.config is not config:
            self.send(0, CONFIG, raw=pickle.dumps(config))
            self.config = config
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        call = _Call(self, request)
        self.calls[request] = call
        self.send(request, kind, meta)
        return call

    def cancel(self, request: int) -> None:
        if self.calls.pop(request, None) is not None and self.alive:
            self.send(request, CANCEL)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.calls or not self.alive or self.idle_timer is not None:
            return
        idle = self.owner.live.current.images.registry_helper_idle
        self.idle_timer = asyncio.get_running_loop().call_later(max(idle, 0.0), self.retire)

    def retire(self) -> None:
        """Stop taking requests and let the helper exit: its stdin ends."""
        self.idle_timer = None
        if not self.alive or self.calls:
            return
        log.debug("registry helper (pid %d) idle; stopping it", self.pid)
        self.retire_now()

    async def stop(self) -> None:
        """End the helper: stdin closed, then SIGKILL after :data:`STOP_GRACE` seconds."""
        self.retire_now()
        done, _ = await asyncio.wait({self.reading}, timeout=STOP_GRACE)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reading

    def retire_now(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.alive = False
        assert self.process.stdin is not None
        self.process.stdin.close()

    async def _read(self) -> None:
        try:
            why = await self._route()
        except asyncio.CancelledError:
            self._end("was stopped with crisp")
            raise
        try:
            code = await asyncio.wait_for(self.process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            code = await self.process.wait()
        if code < 0:
            with contextlib.suppress(ValueError):
                why = f"was killed by {signal.Signals(-code).name}"
        elif code:
            why = f"exited with status {code}"
        self._end(why)

    async def _route(self) -> str:
        """Hand each answer to its request until the helper's output ends; returns why."""
        assert self.process.stdout is not None
        try:
            while True:
                request, kind, meta, raw = await read_frame(self.process.stdout)
                call = self.calls.get(request)
                if call is None:
                    continue  # the last answers of a cancelled request
                if kind in FINAL:
                    call.ended = True
                    del self.calls[request]
                    self._maybe_idle()
                call.put((kind, meta, raw))
                await call.room.wait()
        except asyncio.IncompleteReadError:
            return "closed its output"
        except (ProtocolError, ValueError, OSError) as error:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return f"sent what crisp cannot read ({error})"
        finally:
            self.alive = False
            if self.idle_timer is not None:
                self.idle_timer.cancel()
                self.idle_timer = None

    def _end(self, why: str) -> None:
        """The helper is gone: its running requests fail with :class:`HelperGone`."""
        if self.calls:
            message = (f"the registry helper process (pid {self.pid}) {why} during the pull; "
                       "the next pull starts a new one and resumes the download")
            log.warning("%s", message)
            for call in self.calls.values():
                call.ended = True
                call.put(HelperGone(message))
            self.calls.clear()
        else:
            log.debug("registry helper (pid %d) %s", self.pid, why)
        self.owner.ended(self)


def helper_command() -> list[str]:
    """How to run the helper: this interpreter, crisp's CLI, the hidden subcommand.

    ``-P``: not the daemon's working directory first on sys.path."""
    return [sys.executable, "-P", "-m", "crisp", "registry-helper"]


def helper_env() -> dict[str, str]:
    """The daemon's environment, with this crisp's package directory first on the path, so
    the helper runs the same code as the daemon whatever else is installed."""
    env = dict(os.environ)
    source = str(Path(crisp.__file__).resolve().parent.parent)
    if source not in {str(Path(p).resolve()) for p in site.getsitepackages()}:
        # a checkout or an editable install (site-packages must not come before the stdlib)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return env


class RegistryHelper:
    """The daemon's handle on the registry helper: starts it when a request needs it.

    Stands where :class:`crisp.images.registry.RegistryClient` stood for the puller."""

    def __init__(self, live: LiveConfig, command: Sequence[str] | None = None):
        self.live = live
        self.command = list(command or helper_command())
        self._current: _Process | None = None
        self._processes: set[_Process] = set()  # not yet reaped, the current one among them
        self._starting = asyncio.Lock()
        self._requests = itertools.count(1)
        self._repositories = itertools.count(1)
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The helper taking requests now, if one runs."""
        current = self._current
        return current.pid if current is not None and current.alive else None

    def repository(self, reference: Reference,
                   credentials: Credentials | None) -> RemoteRepository:
        """A client for one pull (as RegistryClient.repository): requests name it, so the
        helper keeps one RepositoryClient (its dead endpoints) per pull."""
        return RemoteRepository(self, next(self._repositories), reference, credentials)

    async def call(self, kind: int, meta: dict[str, Any]) -> _Call:
        """Send a request, starting a helper if none takes requests."""
        process = await self._running()
        return process.start_call(next(self._requests), kind, meta, self.live.current)

    async def _running(self) -> _Process:
        async with self._starting:
            if self._closed:
                raise Unavailable("crisp is stopping; no registry requests are made any more")
            current = self._current
            if current is None or not current.alive:
                current = self._current = await self._start()
            return current

    async def _start(self) -> _Process:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=helper_env(), cwd="/", limit=1 << 20)
        except OSError as error:
            raise Unavailable(
                f"cannot start the registry helper ({' '.join(self.command)}): {error}"
            ) from error
        log.debug("registry helper started (pid %d)", process.pid)
        started = _Process(process, self)
        self._processes.add(started)
        return started

    def ended(self, process: _Process) -> None:
        self._processes.discard(process)
        if self._current is process:
            self._current = None

    async def close(self) -> None:
        """Stop every helper (crisp stops): none outlives the daemon."""
        self._closed = True
        await asyncio.gather(*(process.stop() for process in list(self._processes)))


class RemoteRepository:
    """:class:`crisp.images.registry.RepositoryClient`'s two methods the puller uses, with the
    HTTP done by the registry helper and the bytes written here."""

    def __init__(self, helper: RegistryHelper, number: int, reference: Reference,
                 credentials: Credentials | None):
        self.helper = helper
        self.reference = reference
        self._base: dict[str, Any] = {
            "repository": number,
            "reference": dataclasses.asdict(reference),
            "credentials": dataclasses.asdict(credentials) if credentials is not None else None,
        }

    async def fetch_manifest(self, obj: str) -> FetchedManifest:
        """The manifest (or index) named by tag or digest ``obj``, its digest checked."""
        call = await self.helper.call(MANIFEST, {**self._base, "object": obj})
        try:
            kind, meta, raw = await call.get()
        finally:
            call.close()
        if kind != RESULT:
            raise Unavailable(f"the registry helper answered a manifest request with {kind}")
        return FetchedManifest(raw, str(meta["media_type"]), str(meta["digest"]))

    async def fetch_blob(self, descriptor: Descriptor, ingest: Ingest,
                         on_progress: Callable[[int], None], progress_timeout: float) -> None:
        """Stream the blob into ``ingest`` from its current size (the helper resumes with
        Range after dropped connections); ``on_progress`` after each chunk written."""
        call = await self.helper.call(BLOB, {
            **self._base,
            "descriptor": {"media_type": descriptor.media_type, "digest": descriptor.digest,
                           "size": descriptor.size},
            "written": ingest.written,
            "progress_timeout": progress_timeout,
        })
        try:
            while True:
                kind, _, raw = await call.get()
                if kind == DATA:
                    await ingest.write(raw)
                    on_progress(len(raw))
                elif kind == RESTART:
                    await ingest.restart()
                elif kind == DONE:
                    return
                else:
                    raise Unavailable(f"the registry helper answered a blob request with {kind}")
        finally:
            call.close()
