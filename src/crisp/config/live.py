"""The config in force, and its reload on SIGHUP.

Only options marked ``live`` in the model change on reload; changes to the others are
reported as needing a restart and the running values kept. A file that fails validation
changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crisp.config.load import load
from crisp.config.model import Config

log = logging.getLogger(__name__)

Listener = Callable[[Config], None]


@dataclasses.dataclass(frozen=True)
class ReloadResult:
    """What a reload applied and what it could not apply without a restart."""

    applied: list[str]
    needs_restart: list[str]


class LiveConfig:
    """Holds the current :class:`Config`; domain services read ``current`` when they need it."""

    def __init__(self, config: Config, path: Path | None):
        self.current = config
        self.path = path
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with the new config after every reload that changed something."""
        self._listeners.append(listener)

    def reload(self) -> ReloadResult:
        """Read the file again and apply its live options; raises ConfigError, keeping the old."""
        new = load(self.path)
        old = self.current
        live_values: dict[str, Any] = {}
        applied: list[str] = []
        needs_restart: list[str] = []
        for f in dataclasses.fields(Config):
            changed = _changed_keys(getattr(old, f.name), getattr(new, f.name), f.name)
            if not changed:
                continue
            if f.metadata.get("live"):
                live_values[f.name] = getattr(new, f.name)
                applied.extend(changed)
            else:
                needs_restart.extend(changed)
        if live_values:
            self.current = dataclasses.replace(old, **live_values)
            for listener in self._listeners:
                listener(self.current)
        return ReloadResult(applied, needs_restart)


def _changed_keys(old: Any, new: Any, key: str) -> list[str]:
    """Dotted keys whose values differ between two configs (or parts of one)."""
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
        return [
            k
            for f in dataclasses.fields(old)
            for k in _changed_keys(getattr(old, f.name), getattr(new, f.name), f"{key}.{f.name}")
        ]
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            k
            for name in sorted(set(old) | set(new))
            for k in _changed_keys(old.get(name), new.get(name), f"{key}.{name}")
        ]
    return [key]
