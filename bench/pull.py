#!/usr/bin/env python3
"""Pull-and-unpack speed of crisp against containerd, over the same CRI calls.

Builds images of several shapes from busybox-static (a cold pull of five layers, 60 MiB; one
large layer; thousands of small files; many layers), serves them from a local docker-registry
on 127.0.0.1, starts crisp and Debian's containerd each on its own temporary root and socket,
and times PullImage (which downloads, verifies and unpacks) for each shape on each runtime;
each round pulls an image of its own, so every pull starts cold. Prints medians, the ratio
crisp/containerd (below 1 means crisp is faster), MB/s of each, and crisp's download and
unpack rates. Needs root; cleans up after itself.

    sudo python3 bench/pull.py [--repeat 5] [--shapes cold-5x60m,large,small-files,many-layers]
                               [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from crisp.api import cri_pb2, cri_pb2_grpc  # noqa: E402
from tests.support import image_builder as ib  # noqa: E402
from tests.support.registry import running_registry  # noqa: E402


def shape_cold_5x60(base: ib.Layer, round_: int) -> ib.Image:
    """Five layers of about 12 MiB compressed each (60 MiB in all), none shared: a cold pull."""
    rng = random.Random(1000 + round_)
    layers = []
    for i in range(5):
        text = b"".join(f"layer {i} line {n}: some compressible text\n".encode()
                        for n in range(100_000))
        layers.append(ib.make_layer(ib.LayerBuilder().file(f"layer{i}/random",
                                                           rng.randbytes(47 << 18))
                                    .file(f"layer{i}/text", text)))
    return ib.build_image(layers)


def shape_large(base: ib.Layer, round_: int) -> ib.Image:
    rng = random.Random(round_)
    # half random (incompressible), half text-like (compressible), as real binaries are
    data = rng.randbytes(24 << 20) + b"".join(
        f"line {i} of a large, fairly compressible file\n".encode() for i in range(500_000))
    return ib.build_image([base, ib.make_layer(ib.LayerBuilder().file("large/blob", data))])


def shape_small_files(base: ib.Layer, round_: int) -> ib.Image:
    layer = ib.LayerBuilder()
    for d in range(100):
        layer.dir(f"many/{d:03}")
        for f in range(50):
            layer.file(f"many/{d:03}/file{f:02}.txt",
                       f"round {round_}: content of {d}/{f}\n" * (1 + f % 7))
    return ib.build_image([base, ib.make_layer(layer)])


def shape_many_layers(base: ib.Layer, round_: int) -> ib.Image:
    rng = random.Random(round_)
    layers = [base] + [
        ib.make_layer(ib.LayerBuilder().file(f"layer{i}/data", rng.randbytes(64 << 10)))
        for i in range(60)
    ]
    return ib.build_image(layers)


SETTLE_SECONDS = 1.0

SHAPES = {"cold-5x60m": shape_cold_5x60, "large": shape_large, "small-files": shape_small_files,
          "many-layers": shape_many_layers}


def wait_for_socket(socket: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited: {log.read_text()[-3000:]}")
        if socket.exists():
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                try:
                    cri_pb2_grpc.ImageServiceStub(channel).ListImages(
                        cri_pb2.ListImagesRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.args[0]} did not answer on {socket}: "
                       f"{log.read_text()[-3000:]}")


@contextlib.contextmanager
def containerd(directory: Path, registry_host: str) -> Iterator[tuple[Path, int]]:
    certs = directory / "certs.d" / registry_host
    certs.mkdir(parents=True)
    (certs / "hosts.toml").write_text(
        f'server = "http://{registry_host}"\n\n[host."http://{registry_host}"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    socket = directory / "containerd.sock"
    config = directory / "config.toml"
    config.write_text(f"""version = 2
root = "{directory}/root"
state = "{directory}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{directory}/certs.d"
""")
    log = directory / "containerd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for_socket(socket, process, log)
        yield socket, process.pid
    finally:
        stop(process)


@contextlib.contextmanager
def crisp(directory: Path, log_level: str = "info",
          extra: str = "") -> Iterator[tuple[Path, int]]:
    socket = directory / "run" / "crisp.sock"
    config = directory / "crisp.toml"
    config.write_text(f'root_dir = "{directory}/root"\nrun_dir = "{directory}/run"\n'
                      f'socket = "{socket}"\nlog_level = "{log_level}"\n'
                      + extra.replace("\\n", "\n"))
    log = directory / "crisp.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "crisp", "--config",
                                    str(config)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_socket(socket, process, log)
        yield socket, process.pid
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process (all its threads) and its children have used so
    far: crisp's registry helper (running or reaped) counts as crisp's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            with contextlib.suppress(OSError):
                ticks += sum(int(f) for f in Path(f"/proc/{child}/stat").read_text()
                             .rsplit(")", 1)[1].split()[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def time_pull(socket: Path, reference: str) -> float:
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        images = cri_pb2_grpc.ImageServiceStub(channel)
        started = time.perf_counter()
        images.PullImage(cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=reference)),
                         timeout=600)
        return time.perf_counter() - started


DOWNLOADED = re.compile(r"downloaded sha256:[0-9a-f]+ of \S+ \((\d+) bytes in ([\d.]+)s\)")
UNPACKED = re.compile(r"layer sha256:[0-9a-f]+ of \S+ ready \(\d+ bytes, (\d+) unpacked, "
                      r"unpacked in ([\d.]+)s\)")
STREAMED = re.compile(r"layer sha256:[0-9a-f]+ of \S+ ready \(\d+ bytes, \d+ unpacked while "
                      r"downloading, ready ([\d.]+)s after its download\)")
PHASES = re.compile(r"layer sha256:[0-9a-f]+: extract ([\d.]+)s, syncfs ([\d.]+)s")
FSYNC = re.compile(r"blob sha256:[0-9a-f]+ verified and on disk \(fsync ([\d.]+)s\)")


@dataclass
class Rates:
    """crisp's own split of a pull, from its log: bytes and seconds per blob and per layer."""

    downloaded: int = 0
    download_seconds: float = 0.0
    unpacked: int = 0
    unpack_seconds: float = 0.0
    tails: list[float] = field(default_factory=list)  # layer ready after its download
    syncfs: list[float] = field(default_factory=list)
    fsync: list[float] = field(default_factory=list)

    def add(self, text: str) -> None:
        for size, seconds in DOWNLOADED.findall(text):
            self.downloaded += int(size)
            self.download_seconds += float(seconds)
        for size, seconds in UNPACKED.findall(text):
            self.unpacked += int(size)
            self.unpack_seconds += float(seconds)
        self.tails += [float(seconds) for seconds in STREAMED.findall(text)]
        self.syncfs += [float(syncfs) for _, syncfs in PHASES.findall(text)]
        self.fsync += [float(seconds) for seconds in FSYNC.findall(text)]

    @property
    def download_mbps(self) -> float:
        return self.downloaded / 1e6 / self.download_seconds if self.download_seconds else 0.0

    @property
    def unpack_mbps(self) -> float:
        return self.unpacked / 1e6 / self.unpack_seconds if self.unpack_seconds else 0.0

    @staticmethod
    def mean_ms(values: list[float]) -> str:
        return f"{statistics.mean(values) * 1000:.0f}" if values else "-"


def settle() -> None:
    """Write back what the last pull left dirty, so it does not slow the next one down."""
    os.sync()
    time.sleep(SETTLE_SECONDS)


def unmount_under(directory: Path) -> None:
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(str(directory))), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the medians as JSON "
                        '({"pull <shape> s": {"crisp": x, "containerd": y}}, for bench/report.py)')
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--crisp-config", default="",
                        help='TOML added to crisp\'s config, e.g. "[images]\\n'
                        'unpack_while_downloading = false" to compare')
    parser.add_argument("--log-dir", type=Path,
                        help="keep both runtimes' logs here (crisp logs at debug level: the "
                        "time of each pull phase)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/pull.py needs root (overlay layers, device nodes)", file=sys.stderr)
        return 2
    shapes = args.shapes.split(",")
    print("building images ...", flush=True)
    base = ib.make_layer(ib.busybox_rootfs())
    # One image per shape and round, with layers of their own (only the busybox base is
    # shared, and both runtimes have it before timing starts): every timed pull downloads
    # and unpacks everything, and no image is removed while the other runtime is timed.
    built = {(name, r): SHAPES[name](base, r) for name in shapes for r in range(args.repeat)}
    work = Path(tempfile.mkdtemp(prefix="crisp-bench-"))
    results: dict[str, dict[str, list[float]]] = {}
    rates: dict[str, Rates] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    try:
        with running_registry(base_dir=None) as registry:
            pusher = ib.RegistryPusher(registry.url)
            pusher.push("bench/base", "latest", ib.build_image([base]))
            for (name, r), image in built.items():
                pusher.push(f"bench/{name}", f"r{r}", image)
            (work / "containerd").mkdir()
            (work / "crisp").mkdir()
            with containerd(work / "containerd", registry.host) as (ctr_socket, ctr_pid), \
                    crisp(work / "crisp", "debug" if args.log_dir else "info",
                          args.crisp_config) as (crisp_socket, crisp_pid):
                pids = {"containerd": ctr_pid, "crisp": crisp_pid}
                for socket in (ctr_socket, crisp_socket):
                    time_pull(socket, f"{registry.host}/bench/base:latest")
                settle()
                crisp_log = work / "crisp" / "crisp.log"
                for name in shapes:
                    results[name] = {"crisp": [], "containerd": []}
                    cpu[name] = {"crisp": [], "containerd": []}
                    rates[name] = Rates()
                    for r in range(args.repeat):
                        reference = f"{registry.host}/bench/{name}:r{r}"
                        # alternate who goes first, so neither always gets the warmer cache
                        order = [("containerd", ctr_socket), ("crisp", crisp_socket)]
                        for runtime, socket in order if r % 2 == 0 else order[::-1]:
                            log_at = crisp_log.stat().st_size
                            cpu_at = cpu_seconds(pids[runtime])
                            results[name][runtime].append(time_pull(socket, reference))
                            cpu[name][runtime].append(cpu_seconds(pids[runtime]) - cpu_at)
                            if runtime == "crisp":
                                with open(crisp_log, "rb") as log:
                                    log.seek(log_at)
                                    rates[name].add(log.read().decode(errors="replace"))
                            settle()
    finally:
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            for runtime in ("crisp", "containerd"):
                with contextlib.suppress(OSError):
                    shutil.copy(work / runtime / f"{runtime}.log", args.log_dir)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    print("\nPull: seconds (median), the ratio (below 1: crisp is faster) and MB/s of compressed"
          "\nlayers over the whole pull. From crisp's log: the download rate (per blob stream);"
          "\nthe unpack rate (of unpacked bytes, per layer) of layers unpacked after their"
          "\ndownload; for layers unpacked while they download, the mean ms from the end of the"
          "\ndownload to the layer's ready mark (tail); with --log-dir also the mean ms of a"
          "\nblob's fsync and a layer's syncfs. CPU: seconds of CPU the runtime's process and its"
          "\nchildren (crisp's registry helper) used per pull (median).")
    print(f"\n{'shape':<14}{'layers':>7}{'MB':>7}{'crisp s':>9}{'ctrd s':>8}{'crisp/ctrd':>11}"
          f"{'crisp MB/s':>11}{'ctrd MB/s':>10}{'download MB/s':>14}{'unpack MB/s':>12}"
          f"{'tail ms':>8}{'fsync ms':>9}{'syncfs ms':>10}{'crisp CPU':>10}{'ctrd CPU':>9}")
    for name in shapes:
        image = built[(name, 0)]
        size = sum(len(layer.data) for layer in image.layers) / 1e6
        ours = statistics.median(results[name]["crisp"])
        theirs = statistics.median(results[name]["containerd"])
        print(f"{name:<14}{len(image.layers):>7}{size:>7.1f}{ours:>9.3f}{theirs:>8.3f}"
              f"{ours / theirs:>11.2f}{size / ours:>11.1f}{size / theirs:>10.1f}"
              f"{rates[name].download_mbps:>14.1f}"
              f"{f'{rates[name].unpack_mbps:.1f}' if rates[name].unpacked else '-':>12}"
              f"{Rates.mean_ms(rates[name].tails):>8}{Rates.mean_ms(rates[name].fsync):>9}"
              f"{Rates.mean_ms(rates[name].syncfs):>10}"
              f"{statistics.median(cpu[name]['crisp']):>10.2f}"
              f"{statistics.median(cpu[name]['containerd']):>9.2f}")
    if args.json:
        found = {f"pull {name} s": {runtime: statistics.median(times)
                                    for runtime, times in results[name].items()}
                 for name in shapes}
        Path(args.json).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
