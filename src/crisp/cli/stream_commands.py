"""crispctl's streaming commands: ``exec``, ``attach`` and ``port-forward``.

Each asks the runtime for a streaming URL over CRI and then talks to it with
:mod:`crisp.streaming.client`, over SPDY by default or WebSocket with ``--transport``, as
crictl does. With ``-t`` the local terminal goes raw and follows SIGWINCH; the remote
command's exit code becomes crispctl's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Awaitable, Callable, Iterator

import grpc

from crisp.api import cri_pb2, cri_pb2_grpc
from crisp.streaming.client import (
    TRANSPORTS,
    PortForward,
    RemoteCommand,
    StreamClientError,
    StreamOptions,
    open_command,
    pump,
    serve_local_channels,
)


def add_stream_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register exec, attach and port-forward on crispctl's subcommand parser."""
    run = commands.add_parser("exec", help="run a command in a running container")
    _stdio_flags(run)
    run.add_argument("-s", "--sync", action="store_true",
                     help="run through ExecSync (no stdin, no terminal; output when it ends)")
    run.add_argument("--exec-timeout", type=int, default=0, metavar="SECONDS",
                     help="with --sync: kill the command after this long (default: no limit)")
    run.add_argument("container", metavar="CONTAINER")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD",
                     help="the command and its arguments")
    run.set_defaults(run=_exec)

    attach = commands.add_parser("attach", help="connect to a running container's stdio")
    _stdio_flags(attach)
    attach.add_argument("container", metavar="CONTAINER")
    attach.set_defaults(run=_attach)

    forward = commands.add_parser("port-forward", help="forward local ports to a pod's ports")
    _transport_flag(forward)
    forward.add_argument("--address", default="127.0.0.1",
                         help="local address to listen on (default 127.0.0.1)")
    forward.add_argument("pod", metavar="POD")
    forward.add_argument("ports", nargs="+", metavar="LOCAL:REMOTE",
                         help="a local port and the pod's port it goes to (or one port for both)")
    forward.set_defaults(run=_port_forward)


def _transport_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=TRANSPORTS, default="spdy",
                        help="streaming protocol (default spdy)")


def _stdio_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    _transport_flag(parser)


# exec and attach ----------------------------------------------------------------------------

def _exec(channel: grpc.Channel, args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("crispctl exec: give the command after the container: "
              "crispctl exec CONTAINER -- CMD", file=sys.stderr)
        return 2
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    if args.sync:
        return _exec_sync(runtime, args, cmd)
    response = runtime.Exec(cri_pb2.ExecRequest(
        container_id=args.container, cmd=cmd, tty=args.tty, stdin=args.stdin, stdout=True,
        stderr=not args.tty), timeout=args.timeout)
    return _stream(response.url, args)


def _exec_sync(runtime: cri_pb2_grpc.RuntimeServiceStub, args: argparse.Namespace,
               cmd: list[str]) -> int:
    """ExecSync has no stdin and no terminal in CRI v1: say so rather than ignore the flags."""
    if args.stdin or args.tty:
        print("crispctl exec: --sync takes neither -i nor -t (CRI's ExecSync has no stdin or "
              "terminal); drop --sync to stream", file=sys.stderr)
        return 2
    deadline = args.exec_timeout + args.timeout if args.exec_timeout else None
    result = runtime.ExecSync(cri_pb2.ExecSyncRequest(
        container_id=args.container, cmd=cmd, timeout=args.exec_timeout), timeout=deadline)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.buffer.flush()
    return int(result.exit_code)


def _attach(channel: grpc.Channel, args: argparse.Namespace) -> int:
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    response = runtime.Attach(cri_pb2.AttachRequest(
        container_id=args.container, tty=args.tty, stdin=args.stdin, stdout=True,
        stderr=not args.tty), timeout=args.timeout)
    return _stream(response.url, args)


def _stream(url: str, args: argparse.Namespace) -> int:
    options = StreamOptions(stdin=args.stdin, stdout=True, stderr=not args.tty, tty=args.tty)
    with _raw_terminal(args.tty and os.isatty(0)):
        try:
            return asyncio.run(_session(url, args.transport, options))
        except StreamClientError as error:
            _restore_line()
            print(f"crispctl: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def _restore_line() -> None:
    if os.isatty(2):
        sys.stderr.write("\r")


@contextlib.contextmanager
def _raw_terminal(wanted: bool) -> Iterator[None]:
    if not wanted:
        yield
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


async def _session(url: str, transport: str, options: StreamOptions) -> int:
    loop = asyncio.get_running_loop()
    command = await open_command(url, options, transport)
    try:
        if options.tty:
            _follow_window(loop, command)
        stdin = _StdinReader(loop) if options.stdin else None
        out, err = sys.stdout.buffer, sys.stderr.buffer

        async def to_stdout(data: bytes) -> None:
            out.write(data)
            out.flush()

        async def to_stderr(data: bytes) -> None:
            err.write(data)
            err.flush()

        return await pump(command, stdin=stdin.read if stdin else None, stdout=to_stdout,
                          stderr=to_stderr, close_stdin=not options.tty)
    finally:
        if options.tty:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signal.SIGWINCH)
        await command.close()


def _follow_window(loop: asyncio.AbstractEventLoop, command: RemoteCommand) -> None:
    """Send the terminal's size now and after every SIGWINCH."""
    tasks: set[asyncio.Task[None]] = set()

    def send() -> None:
        try:
            size = os.get_terminal_size(0 if os.isatty(0) else 1)
        except OSError:
            return
        task = loop.create_task(command.resize(size.columns, size.lines))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    send()
    loop.add_signal_handler(signal.SIGWINCH, send)


class _StdinReader:
    """stdin read by a daemon thread: works for terminals, pipes and files alike, and a read
    still blocked when the command ends does not keep crispctl from exiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(16)
        threading.Thread(target=self._run, daemon=True, name="stdin").start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(self.queue.put(data), self.loop).result()
            except Exception:
                return  # the loop is gone
            if not data:
                return

    async def read(self) -> bytes:
        return await self.queue.get()


# port-forward -------------------------------------------------------------------------------

def _port_forward(channel: grpc.Channel, args: argparse.Namespace) -> int:
    pairs: list[tuple[int, int]] = []
    for spec in args.ports:
        local, _, remote = spec.partition(":")
        try:
            pair = (int(local), int(remote or local))
        except ValueError:
            print(f"crispctl port-forward: {spec!r} is not LOCAL:REMOTE (two port numbers)",
                  file=sys.stderr)
            return 2
        pairs.append(pair)
    runtime = cri_pb2_grpc.RuntimeServiceStub(channel)
    request = cri_pb2.PortForwardRequest(pod_sandbox_id=args.pod,
                                         port=[remote for _, remote in pairs])
    # Asked once up front, so a wrong pod is an error before anything listens.
    response = runtime.PortForward(request, timeout=args.timeout)
    try:
        if args.transport == "websocket":
            async def new_url(remote: int) -> str:
                answer = await asyncio.to_thread(
                    runtime.PortForward, cri_pb2.PortForwardRequest(
                        pod_sandbox_id=args.pod, port=[remote]), timeout=args.timeout)
                return str(answer.url)

            return asyncio.run(_forward_channels(new_url, args.address, pairs))
        return asyncio.run(_forward(response.url, args.transport, args.address, pairs))
    except StreamClientError as error:
        print(f"crispctl: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _report(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()


async def _forward_channels(new_url: Callable[[int], Awaitable[str]], address: str,
                            pairs: list[tuple[int, int]]) -> int:
    """``--transport websocket``: the kubelet's channel protocol, a session per connection
    (its URL spent by the first use), so it runs until stopped."""
    servers = []
    for local, remote in pairs:
        server = await serve_local_channels(
            (address, local), remote, functools.partial(new_url, remote), _report)
        servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        print(f"Forwarding from {address}:{bound} -> {remote}", flush=True)
    try:
        await _until_stopped()
    finally:
        for server in servers:
            server.close()
    return 0


async def _forward(url: str, transport: str, address: str, pairs: list[tuple[int, int]]
                   ) -> int:
    report = _report

    async with await PortForward.open(url, transport) as forward:
        servers = []
        for local, remote in pairs:
            server = await forward.serve_local((address, local), remote, report)
            servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            print(f"Forwarding from {address}:{bound} -> {remote}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        ended = asyncio.create_task(forward.session.done.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([ended, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in (ended, stopped):
            task.cancel()
        for server in servers:
            server.close()
        if forward.session.done.is_set() and not stop.is_set():
            report("crispctl: the streaming server ended the port-forward session")
            return 1
    return 0
