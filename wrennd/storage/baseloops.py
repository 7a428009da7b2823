"""Read-only loop devices of base images, shared and reference counted across sandboxes.

Concurrent creates for one base image share one loop device: the first
attaches it while holding the base's lock, the others wait for it and take
a reference.  The last release detaches it.  Blocking: run off the loop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wrennd.log import kv
from wrennd.storage import loopdev
from wrennd.storage.loopdev import LoopDevice

log = logging.getLogger("wrennd.storage")


class LoopOps(Protocol):
    def attach(self, path: Path, read_only: bool) -> LoopDevice: ...
    def detach(self, device: LoopDevice) -> None: ...


class KernelLoops:
    """Loop devices through the kernel's loop ioctls."""

    def attach(self, path: Path, read_only: bool) -> LoopDevice:
        return loopdev.attach(path, read_only)

    def detach(self, device: LoopDevice) -> None:
        loopdev.detach(device)


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    device: LoopDevice | None = None
    refs: int = 0


class BaseLoops:
    def __init__(self, loops: LoopOps) -> None:
        self._loops = loops
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}

    def _entry(self, base: Path) -> _Entry:
        with self._lock:
            return self._entries.setdefault(base, _Entry())

    def acquire(self, base: Path) -> LoopDevice:
        """A reference to the read-only loop device of ``base``, attaching it if none exists."""
        entry = self._entry(base)
        with entry.lock:
            if entry.device is None:
                entry.device = self._loops.attach(base, read_only=True)
                log.info("base image loop attached", extra=kv(base=base, device=entry.device.path))
            entry.refs += 1
            return entry.device

    def release(self, base: Path) -> None:
        """Drop one reference; the last one detaches the device."""
        entry = self._entry(base)
        with entry.lock:
            if entry.device is None or entry.refs <= 0:
                log.warning("release of a base image with no loop reference", extra=kv(base=base))
                return
            entry.refs -= 1
            if entry.refs:
                return
            device, entry.device = entry.device, None
            self._loops.detach(device)
            log.info("base image loop detached", extra=kv(base=base, device=device.path))

    def adopt(self, base: Path, device: LoopDevice, refs: int) -> None:
        """Take over a device found attached at startup, with ``refs`` live users."""
        entry = self._entry(base)
        with entry.lock:
            if entry.device is not None and entry.device != device:
                log.warning(
                    "second loop device for one base image left alone",
                    extra=kv(base=base, kept=entry.device.path, other=device.path),
                )
                return
            entry.device = device
            entry.refs = refs

    def refs(self, base: Path) -> int:
        entry = self._entry(base)
        with entry.lock:
            return entry.refs

    def device(self, base: Path) -> LoopDevice | None:
        entry = self._entry(base)
        with entry.lock:
            return entry.device
