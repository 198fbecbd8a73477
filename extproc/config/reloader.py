"""Hot reload: watch the policy file and swap in a new snapshot; keep the last good one on error.

Polls ``os.stat`` of the path (following symlinks) once a second. Kubernetes
ConfigMap volumes update by swapping a ``..data`` symlink, which changes the
resolved inode: comparing (device, inode, size, mtime) catches that as well as
an in-place edit. The file is then hashed so a touch without a change is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extproc.config.loader import load_file
from extproc.config.model import Snapshot
from extproc.config.reader import ConfigError
from extproc.telemetry.metrics import CONFIG_INFO, CONFIG_RELOADS

log = logging.getLogger("extproc.config")


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    version: str
    loaded_at: float
    last_error: str | None = None
    last_error_at: float | None = None

    @property
    def healthy(self) -> bool:
        return self.last_error is None


def _stat_key(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigHolder:
    """Holds the current snapshot; ``current`` is read on the hot path (one attribute load)."""

    def __init__(self, path: str | Path, on_swap: Callable[[Snapshot], None] | None = None) -> None:
        self.path = Path(path)
        self.current = Snapshot(load_file(self.path))  # a bad file at start-up is fatal
        CONFIG_INFO.labels(self.current.version).set(1)
        self.status = ReloadStatus(self.current.version, time.time())
        self._stat = _stat_key(self.path)
        self.on_swap = on_swap

    def check(self) -> bool:
        """Reload if the file changed. Returns True when a new snapshot was swapped in."""
        key = _stat_key(self.path)
        if key == self._stat:
            return False
        self._stat = key
        try:
            config = load_file(self.path)
        except Exception as exc:  # a loader bug must not look like a healthy reload either
            errors = exc.errors if isinstance(exc, ConfigError) else [f"internal error: {exc!r}"]
            CONFIG_RELOADS.labels("rejected").inc()
            self.status = ReloadStatus(
                self.status.version, self.status.loaded_at, "\n".join(errors), time.time()
            )
            log.error(
                "config reload rejected; still serving the last good config",
                extra={"config_version": self.status.version, "errors": errors,
                       "path": str(self.path)},
                exc_info=not isinstance(exc, ConfigError),
            )
            return False
        if config.digest[:12] == self.current.version:
            self.status = ReloadStatus(self.current.version, self.status.loaded_at)
            return False
        previous = self.current.version
        self.current = Snapshot(config)
        CONFIG_RELOADS.labels("ok").inc()
        CONFIG_INFO.labels(previous).set(0)
        CONFIG_INFO.labels(self.current.version).set(1)
        self.status = ReloadStatus(self.current.version, time.time())
        log.info(
            "config reloaded",
            extra={"config_version": self.current.version, "previous_version": previous},
        )
        if self.on_swap:
            self.on_swap(self.current)
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # never let the watcher die
                log.exception("config watcher failed; will retry")
