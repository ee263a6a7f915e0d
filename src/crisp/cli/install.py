"""``crisp install`` and ``crisp uninstall``: the files that make crisp a service of the node.

Install lays down what is absent and never overwrites: ``/etc/crisp/crisp.toml`` from the
defaults, ``/etc/crictl.yaml`` pointing at crisp, and a systemd unit. It records what it
created (with a digest of each file) in a manifest, so that uninstall removes exactly that:
files an operator edited since are kept and named, and nothing else is touched.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from crisp.config import Config, render

CONFIG = Path("etc/crisp/crisp.toml")
CRICTL = Path("etc/crictl.yaml")
UNIT = Path("etc/systemd/system/crisp.service")
MANIFEST = Path("etc/crisp/installed.json")

UNIT_TEMPLATE = """\
# Written by `crisp install`; removed by `crisp uninstall`.
[Unit]
Description=crisp, a Kubernetes container runtime (CRI v1)
After=network-online.target local-fs.target
Wants=network-online.target
Before=kubelet.service

[Service]
# crisp says READY=1 once it serves CRI, STOPPING=1 when it begins to stop.
Type=notify
NotifyAccess=main
ExecStart={crisp} daemon --config /etc/crisp/crisp.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5
# Containers live in cgroups crisp creates below its own, and each has a conmon that must
# outlive a restart of crisp: systemd delegates the subtree and kills only the main process.
Delegate=yes
KillMode=process
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"""


def installed_config() -> Config:
    """The config install writes: the built-in defaults, with crisp's own pod network on.

    Without ``write_default_config`` a node whose /etc/cni/net.d is empty gives pods no
    network, so a config laid down before the quick start (which would otherwise ask for the
    default network itself) must ask for it too.
    """
    defaults = Config()
    return replace(defaults, cni=replace(defaults.cni, write_default_config=True))


def installed_config_text() -> str:
    return render(installed_config(), [
        "crisp configuration, written by `crisp install`: the built-in defaults",
        "(`crisp config default`), except [cni] write_default_config = true, so that pods get",
        "crisp's own bridge network while /etc/cni/net.d holds no network config. A network",
        "add-on's config (flannel, calico, ...) sorts first and wins; set it to false where",
        "pods should wait for the add-on instead (docs/kubernetes.md).",
    ])


def crictl_yaml(socket: str) -> str:
    endpoint = f"unix://{socket}"
    return (
        "# Written by `crisp install`: crictl talks to crisp.\n"
        f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 10\n"
    )


def default_crisp() -> str:
    """The crisp program next to this Python (the venv's), else the one on the PATH."""
    beside = Path(sys.executable).parent / "crisp"
    return str(beside) if beside.exists() else "/usr/local/bin/crisp"


def _digest(data: bytes) -> str:
    import hashlib  # libcrypto only once something is hashed (crisp.tlsload)
    return hashlib.sha256(data).hexdigest()


@dataclass
class Manifest:
    """What install created: files with their digests, and directories, in creation order."""

    files: dict[str, str] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = root / MANIFEST
        if not path.exists():
            return cls()
        document = json.loads(path.read_text())
        return cls(dict(document["files"]), list(document["directories"]))

    def write(self, root: Path) -> None:
        document = {"files": self.files, "directories": self.directories}
        (root / MANIFEST).write_text(json.dumps(document, indent=2) + "\n")


def _mkdirs(root: Path, relative: Path, manifest: Manifest) -> None:
    missing = [p for p in [relative, *relative.parents][:-1] if not (root / p).exists()]
    for directory in reversed(missing):
        (root / directory).mkdir(mode=0o755)
        manifest.directories.append(str(directory))


def install(root: Path, crisp: str) -> list[str]:
    """Lay down the absent files under ``root``; returns one line per file for the user."""
    manifest = Manifest.read(root)
    wanted = {
        CONFIG: installed_config_text(),
        CRICTL: crictl_yaml(Config().socket),
        UNIT: UNIT_TEMPLATE.format(crisp=crisp),
    }
    report: list[str] = []
    _mkdirs(root, MANIFEST.parent, manifest)
    for relative, text in wanted.items():
        target = root / relative
        if target.exists():
            report.append(f"kept     /{relative} (already there)")
            continue
        _mkdirs(root, relative.parent, manifest)
        data = text.encode()
        target.write_bytes(data)
        target.chmod(0o644)
        manifest.files[str(relative)] = _digest(data)
        report.append(f"wrote    /{relative}")
    manifest.write(root)
    return report


def uninstall(root: Path) -> list[str]:
    """Remove what install created under ``root`` and is unchanged since."""
    manifest = Manifest.read(root)
    report: list[str] = []
    for relative, digest in manifest.files.items():
        target = root / relative
        if not target.exists():
            continue
        if _digest(target.read_bytes()) != digest:
            report.append(f"kept     /{relative} (changed since crisp install)")
            continue
        target.unlink()
        report.append(f"removed  /{relative}")
    (root / MANIFEST).unlink(missing_ok=True)
    for directory in reversed(manifest.directories):
        path = root / directory
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return report


def main_install(root: Path, crisp: str | None) -> int:
    for line in install(root, crisp or default_crisp()):
        print(line)
    if root == Path("/"):
        print("then: systemctl daemon-reload && systemctl enable --now crisp")
    return 0


def main_uninstall(root: Path) -> int:
    if not (root / MANIFEST).exists():
        print(f"nothing to remove: no {root / MANIFEST}", file=sys.stderr)
        return 0
    for line in uninstall(root):
        print(line)
    if root == Path("/"):
        print("stop the service first if it runs: systemctl disable --now crisp")
    return 0
