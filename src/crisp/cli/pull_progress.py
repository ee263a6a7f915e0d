"""``crispctl pull``'s progress: per-layer bars on a terminal, plain lines otherwise.

CRI's PullImage is one unary call that says nothing until the image is there, so crispctl
asks crisp's extension service beside it (``crisp.images.v1.Images/WatchPull``, a stream of
per-layer byte counts). A runtime without that service (any other CRI runtime) answers
UNIMPLEMENTED and the pull shows only its start and end. Progress goes to stderr; stdout
keeps crictl's one result line, so scripts read the same output either way.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Protocol, TextIO

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from crisp.api import crisp_images_pb2, crisp_images_pb2_grpc

PLAIN_PROGRESS_EVERY = 5.0  # seconds between a downloading layer's plain progress lines
FINISHED = ("done", "exists")


class Watcher:
    """Reads WatchPull on a thread of its own, keeping the newest snapshot of the pull."""

    def __init__(self, channel: grpc.Channel, reference: str):
        stub = crisp_images_pb2_grpc.ImagesStub(channel)
        self.stream = stub.WatchPull(crisp_images_pb2.WatchPullRequest(reference=reference))
        self.latest: crisp_images_pb2.PullProgress | None = None
        self.unsupported = False  # the runtime has no WatchPull, or it failed
        self.moved = threading.Event()
        self._thread = threading.Thread(target=self._read, name="watch-pull", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.stream:
                self.latest = message
                self.moved.set()
        except grpc.RpcError as error:
            # another runtime: no progress, say so; any other failure (a bad reference) is
            # PullImage's to report, in its one error line
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                self.moved.set()

    def stop(self) -> None:
        self.stream.cancel()
        self._thread.join(timeout=2)


def short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f}{unit}" if unit != "B" else f"{size:.0f}B"
        size /= 1000
    return f"{size}B"


class Display(Protocol):
    def update(self, pull: crisp_images_pb2.PullProgress) -> None: ...
    def unsupported(self) -> None: ...
    def finish(self, ok: bool) -> None: ...


class PlainDisplay:
    """One line when the pull starts, when a layer starts, moves on (every few seconds) or
    ends, and when the pull ends: readable in a log or a CI job.

    The start line waits until the registry named the layers (or the runtime turns out to
    report no progress), so a pull that fails at once prints only its one error line.
    """

    def __init__(self, reference: str, out: TextIO):
        self.reference = reference
        self.out = out
        self.started = time.monotonic()
        self.states: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.printed_at: dict[str, float] = {}
        self.announced = False

    def _announce(self) -> None:
        if not self.announced:
            self.announced = True
            print(f"Pulling {self.reference}", file=self.out, flush=True)

    def _say(self, line: str) -> None:
        self._announce()
        print(line, file=self.out, flush=True)

    def update(self, pull: crisp_images_pb2.PullProgress) -> None:
        if pull.layers:
            self._announce()
        now = time.monotonic()
        for layer in pull.layers:
            self.sizes[layer.digest] = layer.total_bytes
            before = self.states.get(layer.digest)
            moving = (layer.state == "downloading"
                      and now - self.printed_at.get(layer.digest, now) >= PLAIN_PROGRESS_EVERY)
            if layer.state == before and not moving:
                continue
            if before is None and layer.state == "waiting":
                self.states[layer.digest] = layer.state
                continue  # every layer waits at first: say so only once it does something
            self.states[layer.digest] = layer.state
            self.printed_at[layer.digest] = now
            self._say(f"{short_digest(layer.digest)}: {layer.state} "
                      f"{human(layer.done_bytes)}/{human(layer.total_bytes)}")

    def unsupported(self) -> None:
        self._announce()  # the runtime reports no progress: only the start and end lines

    def finish(self, ok: bool) -> None:
        if not ok:
            return  # the error line says what happened
        for digest, state in self.states.items():
            if state not in FINISHED:
                self._say(f"{short_digest(digest)}: done {human(self.sizes[digest])}/"
                          f"{human(self.sizes[digest])}")
        total = sum(self.sizes.values())
        self._say(f"Pulled {self.reference}" + (f" ({human(total)})" if total else "")
                  + f" in {time.monotonic() - self.started:.1f}s")


class RichDisplay:
    """A live bar per layer (size, speed, state) on the terminal."""

    def __init__(self, reference: str, out: TextIO):
        self.console = Console(file=out)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
            console=self.console, transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.reference = reference
        self.progress.start()
        self.overall = self.progress.add_task(f"Pulling {reference}", total=None,
                                              state="resolving")

    def update(self, pull: crisp_images_pb2.PullProgress) -> None:
        for layer in pull.layers:
            task = self.tasks.get(layer.digest)
            if task is None:
                task = self.tasks[layer.digest] = self.progress.add_task(
                    short_digest(layer.digest), total=layer.total_bytes or None,
                    state=layer.state)
            self.progress.update(task, completed=layer.done_bytes, state=layer.state)
        if pull.layers:
            total = sum(layer.total_bytes for layer in pull.layers)
            done = sum(layer.done_bytes for layer in pull.layers)
            self.progress.update(self.overall, total=total or None, completed=done,
                                 state="downloading")

    def unsupported(self) -> None:
        self.progress.update(self.overall, state="(the runtime reports no progress)")

    def finish(self, ok: bool) -> None:
        if ok:
            for task in [self.overall, *self.tasks.values()]:
                total = self.progress.tasks[task].total
                self.progress.update(task, total=total or 1, completed=total or 1, state="done")
        else:
            self.progress.live.transient = True  # erase the bars: the error line stays alone
        self.progress.stop()


def show_pull(channel: grpc.Channel, reference: str, call: grpc.Future[Any],
              out: TextIO | None = None) -> None:
    """Show the progress of the PullImage ``call`` for ``reference`` until it returns."""
    out = out or sys.stderr
    display: Display = (RichDisplay if out.isatty() else PlainDisplay)(reference, out)
    watcher = Watcher(channel, reference)
    said_unsupported = False
    ok = False
    try:
        while not call.done():
            watcher.moved.wait(0.2)
            watcher.moved.clear()
            if watcher.latest is not None:
                display.update(watcher.latest)
            if watcher.unsupported and not said_unsupported:
                said_unsupported = True
                display.unsupported()
        ok = call.exception() is None
        if ok and watcher.latest is not None:
            display.update(watcher.latest)
    finally:
        call.cancel()  # on ^C: crisp stops the pull (its partial downloads resume next time)
        watcher.stop()
        display.finish(ok)
