"""What crisp keeps on disk is root's alone; only what containers must see is public.

A container's config (with its environment, where Kubernetes puts secrets) is in the
database and its bundle, its output in its log. Each test looks at the host as a local user
would: the modes of everything crisp creates under its root, run and log dirs, and what the
``nobody`` user can read there. And containers still see the usual modes (umask 022).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crisp.api import cri_pb2
from crisp.state import DATABASE_FILES
from tests.support.pods import PodsEnv, pods_environment, wait_for

pytestmark = pytest.mark.integration

SECRET = f"crisp-secret-{uuid.uuid4().hex}"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ID = "[0-9a-f]{64}"

# Paths (relative to the root, run or log dir) whose mode lets other users in, and why.
PUBLIC = {
    # What containers see as their own: "/" (the overlay's upper), its work dir and mount
    # point, the layers beneath it, and the pod's files bind-mounted into every container.
    "root": [rf"containers/{ID}/(upper|work|rootfs)", rf"layers/{ID}/diff", r"layers/empty",
             rf"pods/{ID}/(hosts|resolv\.conf|hostname|shm)"],
    # Namespace pins: nsfs files are 0444 whatever crisp asks.
    "run": [rf"pods/{ID}/ns/(net|ipc|uts)"],
    "logs": [],
}
# Helper programs make these with their own modes, inside directories that are crisp's 0700.
HELPERS = {
    "root": [r"network/ipam(/.*)?"],  # host-local IPAM's store
    "run": [rf"containers/{ID}/(conmon\.pid|pidfile)",  # conmon, runc
            rf"runtimes/runc/{ID}"],  # runc's state dir (0711, its files 0600)
    "logs": [],
}
# Not walked into: the contents of container filesystems are the image's and the container's.
CONTENTS = [rf"containers/{ID}/(upper|work|rootfs)", rf"layers/{ID}/diff",
            rf"pods/{ID}/shm"]


@pytest.fixture(scope="module")
def env() -> Iterator[PodsEnv]:
    with tempfile.TemporaryDirectory(prefix="crisp-modes-") as base, \
            pods_environment(Path(base)) as environment:
        # As /var/lib and /run are: any user may walk to crisp's directories.
        os.chmod(base, 0o755)
        yield environment


@pytest.fixture(scope="module")
def running(env: PodsEnv) -> Iterator[tuple[str, str]]:
    """A pod with a container whose env holds the secret, which it also prints to its log."""
    pod_config = env.pod_config()
    pod_id = env.run_pod(pod_config)
    config = env.container_config("holder", ["sh", "-c", 'echo "$TOKEN"; exec sleep 600'],
                                  envs=[cri_pb2.KeyValue(key="TOKEN", value=SECRET.encode())])
    container_id = env.run_container(pod_id, config, pod_config)
    log = Path(env.status(container_id).status.log_path)
    wait_for(lambda: log.exists() and SECRET in log.read_text(), 10, "the container's output")
    yield pod_id, container_id
    env.remove_pod(pod_id)


def dirs(env: PodsEnv) -> dict[str, Path]:
    return {"root": env.daemon.root, "run": env.daemon.run_dir, "logs": env.logs}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def walk(top: Path) -> Iterator[tuple[str, Path]]:
    """Every entry below ``top`` but symlinks and container filesystem contents."""
    for directory, subdirs, files in os.walk(top):
        relative = os.path.relpath(directory, top)
        if relative != "." and any(re.fullmatch(p, relative) for p in CONTENTS):
            subdirs.clear()
            continue
        for name in subdirs + files:
            path = Path(directory) / name
            if not path.is_symlink():
                yield os.path.relpath(path, top), path


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True)


def test_nothing_crisp_makes_is_open_to_other_users(env: PodsEnv,
                                                    running: tuple[str, str]) -> None:
    opened: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name, top in dirs(env).items():
        assert mode(top) == 0o700, f"{name} dir {top} is {oct(mode(top))}"
        for relative, path in walk(top):
            seen.add(f"{name}/{relative}")
            if not mode(path) & 0o007:
                continue
            if any(re.fullmatch(p, relative) for p in PUBLIC[name] + HELPERS[name]):
                continue
            opened.setdefault(name, []).append(f"{relative} {oct(mode(path))}")
    assert not opened, f"open to other users: {opened}"

    # The public ones are what containers need, and no more than that.
    pod_id, container_id = running
    root, run = env.daemon.root, env.daemon.run_dir
    public = {
        root / "containers" / container_id / "upper": 0o755,
        root / "containers" / container_id / "rootfs": 0o755,
        root / "layers" / "empty": 0o755,
        root / "pods" / pod_id / "hosts": 0o644,
        root / "pods" / pod_id / "resolv.conf": 0o644,
        root / "pods" / pod_id / "hostname": 0o644,
    }
    assert {path: mode(path) for path in public} == public
    assert {mode(root / "layers" / d / "diff") for d in os.listdir(root / "layers")
            if re.fullmatch(ID, d)} == {0o755}
    private = {
        **{root / name: 0o600 for name in DATABASE_FILES if (root / name).exists()},
        root / "containers": 0o700,
        root / "containers" / container_id: 0o700,
        root / "pods" / pod_id: 0o700,
        root / "content": 0o700,
        run / "containers" / container_id: 0o700,
        run / "containers" / container_id / "config.json": 0o600,
        run / "crisp.lock": 0o600,
        Path(env.status(container_id).status.log_path): 0o600,
        Path(env.status(container_id).status.log_path).parent: 0o700,
    }
    assert {path: mode(path) for path in private} == private
    assert (root / "crisp.db").exists() and f"root/{DATABASE_FILES[0]}" in seen
    assert mode(env.daemon.socket) == 0o660


def test_nobody_reads_the_secret(env: PodsEnv, running: tuple[str, str]) -> None:
    _, container_id = running
    root, run = env.daemon.root, env.daemon.run_dir
    log = env.status(container_id).status.log_path
    holders = [str(root / name) for name in DATABASE_FILES if (root / name).exists()]
    holders += [str(run / "containers" / container_id / "config.json"), log]
    # root finds the secret in the database, the bundle and the log: the check means something
    found = subprocess.run(["grep", "-l", "-a", SECRET, *holders], capture_output=True,
                           text=True).stdout.split()
    assert str(run / "containers" / container_id / "config.json") in found and log in found
    assert set(found) & set(holders[:-2]), "the database holds the container's env"

    for path in holders:
        read = as_nobody("cat", path)
        assert read.returncode != 0 and "ermission denied" in read.stderr, path
        assert SECRET not in read.stdout
    for top in dirs(env).values():
        search = as_nobody("grep", "-r", "-l", "-a", SECRET, str(top))
        assert search.stdout == "", f"nobody reads the secret in {search.stdout}"


def test_start_up_makes_an_older_install_private(env: PodsEnv,
                                                 running: tuple[str, str]) -> None:
    root = env.daemon.root
    present = [name for name in DATABASE_FILES if (root / name).exists()]
    assert "crisp.db-wal" in present  # WAL mode, and the daemon is running
    os.chmod(root, 0o755)
    os.chmod(env.daemon.run_dir, 0o755)
    for name in present:
        os.chmod(root / name, 0o644)
    # As an older crisp would leave them: killed, so the -wal and -shm stay behind.
    env.daemon.kill()
    assert all(mode(root / name) == 0o644 for name in present)
    env.daemon.start()
    assert mode(root) == 0o700 and mode(env.daemon.run_dir) == 0o700
    assert {name: mode(root / name) for name in present} == dict.fromkeys(present, 0o600)
    read = as_nobody("cat", str(root / "crisp.db"))
    assert read.returncode != 0
    # and the container lived through it
    assert env.status(running[1]).status.state == cri_pb2.CONTAINER_RUNNING


def test_containers_see_the_usual_modes(env: PodsEnv, running: tuple[str, str],
                                        tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    volume = tmp_path / "made" / "volume"  # missing: crisp creates it, as containerd
    pod_id, _ = running
    config = env.container_config("user-1000", ["sh", "-c", "exec sleep 600"], mounts=[
        cri_pb2.Mount(container_path="/volume", host_path=str(volume))])
    config.linux.security_context.run_as_user.value = 1000
    container_id = env.run_container(pod_id, config)
    try:
        assert mode(volume.parent) == 0o755 and mode(volume) == 0o755
        script = ("id -u; umask; stat -c '%a %n' / /bin /etc /etc/hosts /etc/resolv.conf "
                  "/etc/hostname /volume /dev /dev/null; ls /volume && echo listed; "
                  "cd /tmp && touch f && mkdir d && stat -c '%a %n' f d")
        result = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", script], timeout=10))
        assert result.exit_code == 0, result.stderr
        assert result.stdout.decode().splitlines() == [
            "1000", "0022", "755 /", "755 /bin", "755 /etc", "644 /etc/hosts",
            "644 /etc/resolv.conf", "644 /etc/hostname", "755 /volume", "755 /dev",
            "666 /dev/null", "listed", "644 f", "755 d"]
        # the container's own process (not an exec) too
        logged = env.runtime.ExecSync(cri_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", "grep Umask /proc/1/status"],
            timeout=10))
        assert logged.stdout.decode().split() == ["Umask:", "0022"]
    finally:
        env.runtime.StopContainer(cri_pb2.StopContainerRequest(container_id=container_id,
                                                               timeout=0))
        env.runtime.RemoveContainer(cri_pb2.RemoveContainerRequest(container_id=container_id))
