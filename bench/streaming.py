"""Streaming: exec latency, exec stdout throughput and port-forward throughput, crisp against
containerd, same machine, same run.

Both runtimes run at once (bench/common.py starts them as bench/lifecycle.py does), each with
one pod whose busybox container serves a 100 MiB file with ``httpd``; the measurements
alternate between them so a busy machine slows both alike. One client for both:

* exec latency: the Exec RPC, then a WebSocket (``v4.channel.k8s.io``, aiohttp) to its URL
  running ``true`` until the v4 status arrives; median and p90;
* exec stdout throughput: ``head -c 104857600 /dev/zero`` over the same WebSocket, timed from
  the first stdout byte to the last;
* port-forward throughput: ``GET /blob`` (100 MiB) through a PortForward stream. containerd
  1.6 speaks only the kubelet's WebSocket channel protocol for port-forward and crisp only
  SPDY (also tunnelled in WebSocket), so the common ground is plain SPDY/3.1: crisp's own
  framing (``crisp.streaming.spdy``) is the client.

Results are printed as a table and as crisp/containerd ratios. Run as root from the repository
root::

    python bench/streaming.py [--execs 30] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PodDriver,
    bench_registry,
    containerd_runtime,
    crisp_runtime,
    percentile,
    write_json,
)

from crisp.api import cri_pb2
from crisp.streaming import spdy

MIB = 1024 * 1024
SIZE = 100 * MIB
PORT = 8080
SERVER = ["sh", "-c", f"head -c {SIZE} /dev/zero > /tmp/blob && exec httpd -f -p {PORT} -h /tmp"]


@dataclass
class Results:
    exec_latency: list[float] = field(default_factory=list)
    exec_mib_s: list[float] = field(default_factory=list)
    forward_mib_s: list[float] = field(default_factory=list)


# Clients -----------------------------------------------------------------------------------

@dataclass
class ExecOutcome:
    stdout_bytes: int
    status: dict[str, object]
    first_byte: float
    last_byte: float


async def ws_exec(http: aiohttp.ClientSession, url: str) -> ExecOutcome:
    """Run an exec URL over WebSocket v4 to its end: stdout counted, the status parsed."""
    count, status, first, last = 0, {}, 0.0, 0.0
    async with http.ws_connect(url, protocols=("v4.channel.k8s.io",), max_msg_size=0,
                               autoping=True) as ws:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            if channel == 1 and data:
                last = time.perf_counter()
                if not count:
                    first = last
                count += len(data)
            elif channel == 3 and data:
                status = json.loads(data)
    return ExecOutcome(count, status, first, last)


async def spdy_get(url: str, port: int, path: str) -> tuple[int, float]:
    """GET ``path`` from ``port`` through a SPDY port-forward URL: body bytes and MiB/s."""
    target = yarl.URL(url)
    assert target.host is not None and target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 20)
    writer.write((f"POST {target.raw_path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                  "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                  "X-Stream-Protocol-Version: portforward.k8s.io\r\n"
                  "Content-Length: 0\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        writer.close()
        raise RuntimeError(f"port-forward upgrade refused: {head[:200]!r}")
    session = spdy.Session(reader, writer, server=False)
    runner = asyncio.create_task(session.run())
    try:
        headers = {"port": [str(port)], "requestid": ["0"]}
        error = await session.open_stream({**headers, "streamtype": ["error"]}, fin=True)
        data = await session.open_stream({**headers, "streamtype": ["data"]})
        await data.replied.wait()
        await data.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await data.read()
            if not chunk:
                raise RuntimeError(f"no HTTP response: {received!r} "
                                   f"{(await error.read_all())!r}")
            received += chunk
        response_head, body = received.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":", 1)[1]) for line in response_head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        began, count = time.perf_counter(), len(body)
        while count < length:
            chunk = await data.read(1 << 20)
            if not chunk:
                break
            count += len(chunk)
        took = time.perf_counter() - began
        return count, count / MIB / took
    finally:
        await session.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


# One runtime's pod ---------------------------------------------------------------------------

class Target:
    """A runtime, its pod serving the blob, and the three measurements against it."""

    def __init__(self, driver: PodDriver):
        self.driver = driver
        self.name = driver.runtime.name
        self.pod_id, self.container_id, _ = driver.start(f"stream-{self.name}", SERVER)
        self.results = Results()

    def exec_url(self, argv: list[str], stderr: bool = True) -> str:
        return str(self.driver.stub.Exec(cri_pb2.ExecRequest(
            container_id=self.container_id, cmd=argv, stdout=True, stderr=stderr)).url)

    def forward_url(self) -> str:
        return str(self.driver.stub.PortForward(cri_pb2.PortForwardRequest(
            pod_sandbox_id=self.pod_id, port=[PORT])).url)

    async def exec_true(self, http: aiohttp.ClientSession) -> float:
        began = time.perf_counter()
        outcome = await ws_exec(http, self.exec_url(["true"]))
        took = time.perf_counter() - began
        if outcome.status.get("status") != "Success":
            raise RuntimeError(f"{self.name}: exec true failed: {outcome.status}")
        return took

    async def exec_stream(self, http: aiohttp.ClientSession) -> float:
        outcome = await ws_exec(http, self.exec_url(["head", "-c", str(SIZE), "/dev/zero"],
                                                    stderr=False))
        if outcome.stdout_bytes != SIZE:
            raise RuntimeError(f"{self.name}: exec streamed {outcome.stdout_bytes} bytes, "
                               f"not {SIZE}: {outcome.status}")
        return SIZE / MIB / (outcome.last_byte - outcome.first_byte)

    async def forward(self) -> float:
        count, rate = await spdy_get(self.forward_url(), PORT, "/blob")
        if count != SIZE:
            raise RuntimeError(f"{self.name}: port-forward got {count} bytes, not {SIZE}")
        return rate

    async def wait_ready(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                await self.forward()
                return
            except (RuntimeError, ConnectionError, StopIteration, OSError) as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: httpd never served the blob: {error}"
                                       ) from error
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        self.driver.stop(self.pod_id, self.container_id)


async def measure(targets: list[Target], options: argparse.Namespace) -> None:
    async with aiohttp.ClientSession() as http:
        for target in targets:
            await target.wait_ready()
            for _ in range(3):
                await target.exec_true(http)
        for _ in range(options.execs):
            for target in targets:
                target.results.exec_latency.append(await target.exec_true(http))
        for _ in range(options.rounds):
            for target in targets:
                target.results.exec_mib_s.append(await target.exec_stream(http))
                target.results.forward_mib_s.append(await target.forward())


def report(crisp: Results, ctrd: Results, options: argparse.Namespace) -> None:
    def row(label: str, a: float, b: float, unit: str) -> None:
        print(f"{label:<40} {a:>10.1f} {b:>12.1f} {unit:<6} {a / b:>7.2f}")

    print(f"\n{'':<40} {'crisp':>10} {'containerd':>12} {'':<6} {'ratio':>7}")
    row(f"exec true latency median (n={options.execs})",
        statistics.median(crisp.exec_latency) * 1000,
        statistics.median(ctrd.exec_latency) * 1000, "ms")
    row("exec true latency p90", percentile(crisp.exec_latency, 0.9) * 1000,
        percentile(ctrd.exec_latency, 0.9) * 1000, "ms")
    row(f"exec stdout 100 MiB median (n={options.rounds})", statistics.median(crisp.exec_mib_s),
        statistics.median(ctrd.exec_mib_s), "MiB/s")
    row(f"port-forward 100 MiB median (n={options.rounds})",
        statistics.median(crisp.forward_mib_s), statistics.median(ctrd.forward_mib_s), "MiB/s")
    latency_ok = statistics.median(crisp.exec_latency) < statistics.median(ctrd.exec_latency)
    exec_ok = statistics.median(crisp.exec_mib_s) >= statistics.median(ctrd.exec_mib_s) / 2
    forward_ok = (statistics.median(crisp.forward_mib_s)
                  >= statistics.median(ctrd.forward_mib_s) / 2)
    print(f"\ntarget: exec latency median below containerd's: {'met' if latency_ok else 'NOT met'}")
    print(f"target: exec throughput at least half of containerd's: "
          f"{'met' if exec_ok else 'NOT met'}")
    print(f"target: port-forward throughput at least half of containerd's: "
          f"{'met' if forward_ok else 'NOT met'}")
    print(f"(raw: crisp {crisp}\n      containerd {ctrd})")


def metrics(results: dict[str, Results]) -> dict[str, dict[str, Any]]:
    """The JSON bench/report.py reads: {"metric": {"crisp": x, "containerd": y}}."""
    found: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        for metric, value in (
                ("exec latency ms", [round(s * 1000, 3) for s in result.exec_latency]),
                ("exec latency median ms", statistics.median(result.exec_latency) * 1000),
                ("exec stdout MiB/s", statistics.median(result.exec_mib_s)),
                ("port-forward MiB/s", statistics.median(result.forward_mib_s))):
            found.setdefault(metric, {})[name] = value
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=30, help="execs of true per runtime")
    parser.add_argument("--rounds", type=int, default=3, help="100 MiB transfers per kind")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the runtimes mount overlays and create namespaces")
    for binary in ("containerd", "runc", "conmon", "docker-registry"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is not installed")
    base = Path(tempfile.mkdtemp(prefix="crisp-sbench-"))
    try:
        with bench_registry() as registry, contextlib.ExitStack() as stack:
            busybox, pause = registry.busybox, registry.pause
            targets = []
            for name, factory in (("crisp", crisp_runtime), ("containerd", containerd_runtime)):
                print(f"starting {name}...", flush=True)
                runtime = stack.enter_context(factory(base / name, registry.host))
                driver = PodDriver(runtime, busybox, base / name / "logs")
                driver.pull(busybox, pause)
                target = Target(driver)
                stack.callback(target.stop)
                targets.append(target)
            print("measuring (alternating between the runtimes)...", flush=True)
            asyncio.run(measure(targets, options))
            report(targets[0].results, targets[1].results, options)
            write_json(options.json, metrics({t.name: t.results for t in targets}))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
