"""Who holds a sandbox's disk open, found from the kernel rather than from our records.

Two VMMs on one writable layer corrupt it.  Before a VMM starts on a drive,
the daemon proves nobody has it: no process has an open file on it (a scan of
``/proc/*/fd``, compared by device and inode, or by device number for a block
device), and no loop device is backed by it (``LOOP_GET_STATUS64`` names the
backing file's device and inode, whatever mount namespace bound it: fcsim's
guests mount their drive through a loop device).  This holds even when the
bookkeeping is wrong.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time
from pathlib import Path

from wrennd.storage.errors import StorageError

LOOP_GET_STATUS64 = 0x4C05
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit; u32 number, ...
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# A VMM that just stopped may release its loop device a moment later (autoclear).
SETTLE_TIMEOUT = 3.0


class DriveInUse(StorageError):
    def __init__(self, drive: Path, holders: list[str]) -> None:
        super().__init__(f"{drive} is in use by {', '.join(holders)}: refusing a second VMM")
        self.drive = drive
        self.holders = holders


def _key(st: os.stat_result) -> tuple[str, int, int]:
    if stat.S_ISBLK(st.st_mode):
        return ("blk", st.st_rdev, 0)
    return ("file", st.st_dev, st.st_ino)


def _process_holders(key: tuple[str, int, int]) -> list[str]:
    found = []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if _key(os.stat(fd)) == key:
                    found.append(f"process {proc.name}")
                    break
            except OSError:
                continue
    return found


def _decode_dev(encoded: int) -> int:
    """The kernel's new_encode_dev() form (what loop_info64 carries) as an st_dev."""
    major = (encoded & 0xFFF00) >> 8
    minor = (encoded & 0xFF) | ((encoded >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def _loop_holders(key: tuple[str, int, int]) -> list[str]:
    if key[0] != "file":
        return []
    found = []
    for dev in sorted(Path("/dev").glob("loop[0-9]*")):
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            buf = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: not bound
                raise
            continue
        finally:
            os.close(fd)
        device, inode = _LOOP_INFO64.unpack(buf)[:2]
        if (_decode_dev(device), inode) == key[1:]:
            found.append(f"loop device {dev}")
    return found


def holders(drive: Path) -> list[str]:
    """Every process and loop device that has ``drive`` open right now."""
    key = _key(os.stat(drive))
    return _process_holders(key) + _loop_holders(key)


def require_unheld(drive: Path, settle: float = SETTLE_TIMEOUT) -> None:
    """Return once nobody holds ``drive``; DriveInUse if someone still does after
    ``settle`` seconds (blocking: run it in a thread)."""
    deadline = time.monotonic() + settle
    while True:
        found = holders(drive)
        if not found:
            return
        if time.monotonic() >= deadline:
            raise DriveInUse(drive, found)
        time.sleep(0.05)
