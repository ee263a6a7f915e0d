"""Running one CNI plugin binary: environment, stdin, stdout, errors and time limits.

Each call is a fresh process started with asyncio (fork+exec, never a bare fork). A plugin
that fails is reported with its CNI error ("msg", "details", "code") and its stderr, so the
person reading the pod's events can see what the plugin said.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisp.errors import DeadlineExceeded, FailedPrecondition
from crisp.process import run_program

log = logging.getLogger(__name__)

PLUGIN_TIMEOUT = 120.0
"""Seconds one plugin call may take; a plugin stuck longer is killed."""

_STDERR_LIMIT = 2000
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PluginError(FailedPrecondition):
    """A CNI plugin exited with an error; the message says which, what it said, and stderr.

    FAILED_PRECONDITION: the node's network setup (its CNI config, plugins, bridge, IPAM) is
    what has to change before the pod can start, not the request.
    """

    def __init__(self, message: str, *, code: int | None, msg: str, details: str, stderr: str):
        super().__init__(message)
        self.code = code
        self.msg = msg
        self.details = details
        self.stderr = stderr


@dataclass(frozen=True)
class Call:
    """The CNI_* parameters of one invocation (section 2 of the CNI spec)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""

    def environment(self, bin_dirs: Sequence[str]) -> dict[str, str]:
        """The plugin's environment: crisp's own minus stale CNI_* values, plus this call's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        path = env.get("PATH", "")
        # Plugins run iptables, ip and friends: make sure the sbin directories are reachable.
        env["PATH"] = f"{path}:{_SYSTEM_PATH}" if path else _SYSTEM_PATH
        env["CNI_COMMAND"] = self.command
        env["CNI_PATH"] = os.pathsep.join(bin_dirs)
        if self.container_id:
            env["CNI_CONTAINERID"] = self.container_id
        if self.command != "STATUS" and self.command != "VERSION":
            env["CNI_NETNS"] = self.netns
            env["CNI_IFNAME"] = self.ifname
            env["CNI_ARGS"] = self.args
        return env


def check_plugin_type(plugin_type: object) -> str:
    """The plugin's ``type`` if it can name a file in a bin dir; ValueError says why not."""
    if not isinstance(plugin_type, str) or not plugin_type:
        raise ValueError("a plugin has no \"type\" (the name of its binary)")
    if "/" in plugin_type or "\\" in plugin_type or plugin_type in (".", ".."):
        raise ValueError(f"plugin type {plugin_type!r} is not a plain file name")
    return plugin_type


def find_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> Path | None:
    """The first executable called ``plugin_type`` in ``bin_dirs``, in order."""
    for directory in bin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> Path:
    path = find_plugin(plugin_type, bin_dirs)
    if path is None:
        raise FailedPrecondition(
            f"CNI plugin {plugin_type!r} was not found in {':'.join(bin_dirs) or '(no bin dirs)'}"
        )
    return path


async def run_plugin(
    path: Path,
    call: Call,
    config: dict[str, Any],
    bin_dirs: Sequence[str],
    *,
    network: str,
    time_limit: float = PLUGIN_TIMEOUT,
) -> dict[str, Any] | None:
    """Run the plugin and return its JSON output (None if it printed nothing)."""
    stdin = json.dumps(config).encode()
    what = f"CNI plugin {path.name} ({path}) {call.command} for network {network!r}"
    try:
        result = await run_program([str(path)], time_limit=time_limit, stdin=stdin,
                                   env=call.environment(bin_dirs), cwd="/")
    except OSError as error:
        raise FailedPrecondition(f"{what}: could not start it: {error}") from error
    except TimeoutError:
        raise DeadlineExceeded(f"{what} did not finish within {time_limit:g}s and was killed") \
            from None
    stdout = result.stdout
    err_text = result.stderr.decode(errors="replace").strip()
    if result.returncode != 0:
        raise _plugin_error(what, result.returncode, stdout, err_text)
    if err_text:
        log.debug("%s wrote to stderr: %s", what, err_text[:_STDERR_LIMIT])
    if not stdout.strip():
        return None
    try:
        output = json.loads(stdout)
    except ValueError as error:
        raise FailedPrecondition(
            f"{what} succeeded but printed output that is not JSON ({error}): "
            f"{stdout[:200].decode(errors='replace')!r}"
        ) from None
    if not isinstance(output, dict):
        raise FailedPrecondition(f"{what} succeeded but printed JSON that is not an object")
    return output


def _plugin_error(what: str, returncode: int | None, stdout: bytes, stderr: str) -> PluginError:
    """The error for a failed call, built from the spec's error JSON where the plugin sent it."""
    code: int | None = None
    msg = details = ""
    try:
        parsed = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        raw_code = parsed.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        msg = str(parsed.get("msg") or "")
        details = str(parsed.get("details") or "")
    elif stdout.strip():
        msg = stdout.decode(errors="replace").strip()[:_STDERR_LIMIT]
    parts = [f"{what} failed (exit status {returncode})"]
    said = ": ".join(p for p in (msg, details) if p)
    if said:
        parts.append(said)
    if code is not None:
        parts.append(f"CNI error code {code}")
    if stderr:
        parts.append(f"stderr: {stderr[-_STDERR_LIMIT:]}")
    return PluginError("; ".join(parts), code=code, msg=msg, details=details, stderr=stderr)
