"""fcsim's log, in the shape of Firecracker's: one line per event, to a file or FIFO."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

LEVELS = {"off": 0, "error": 1, "warning": 2, "info": 3, "debug": 4, "trace": 5}


class VmmLog:
    def __init__(self, vm_id: str, level: str = "Info", show_level: bool = False) -> None:
        self.vm_id = vm_id
        self.show_level = show_level
        self._level = LEVELS[level.lower()]
        self._out: TextIO = sys.stdout
        self._owned = False

    def reopen(self, path: Path) -> None:
        # Like Firecracker: the file or FIFO must already exist (no O_CREAT).
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        new = os.fdopen(fd, "w", buffering=1)
        if self._owned:
            self._out.close()
        self._out, self._owned = new, True

    def set_level(self, level: str) -> None:
        self._level = LEVELS[level.lower()]

    def _emit(self, level: str, msg: str) -> None:
        if LEVELS[level] > self._level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}"
        tag = f"{self.vm_id}:fcsim" + (f":{level.upper()}" if self.show_level else "")
        self._out.write(f"{stamp} [{tag}] {msg}\n")
        self._out.flush()

    def error(self, msg: str) -> None:
        self._emit("error", msg)

    def warning(self, msg: str) -> None:
        self._emit("warning", msg)

    def info(self, msg: str) -> None:
        self._emit("info", msg)

    def debug(self, msg: str) -> None:
        self._emit("debug", msg)

    def close(self) -> None:
        if self._owned:
            self._out.close()
            self._owned = False
