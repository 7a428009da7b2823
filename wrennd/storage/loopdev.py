"""Loop devices through the kernel's ioctls (LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LOOP_CLR_FD).

Every call here blocks (ioctls, opens of block devices): run it on an
executor thread, never on the event loop.  Bound devices and their backing
files are read back from sysfs (/sys/block/loopN/loop/backing_file), which
is what stale cleanup relies on after a restart.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from wrennd.storage.errors import DeviceError

LOOP_CONTROL = Path("/dev/loop-control")
SYS_BLOCK = Path("/sys/block")

# <linux/loop.h>
LOOP_CLR_FD = 0x4C01
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_NAME_SIZE = 64

# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit;
#                      u32 number, encrypt_type, encrypt_key_size, flags;
#                      u8 file_name[64], crypt_name[64], encrypt_key[32]; u64 init[2]; }
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")
assert _LOOP_CONFIG.size == 304

# Another process may take the device LOOP_CTL_GET_FREE handed us before we
# configure it (EBUSY); ask for a fresh one this many times.
_ATTACH_ATTEMPTS = 32


@dataclass(frozen=True)
class LoopDevice:
    number: int
    major: int
    minor: int

    @property
    def path(self) -> Path:
        return Path(f"/dev/loop{self.number}")

    @property
    def devno(self) -> str:
        """``major:minor``, the form device-mapper tables use and print back."""
        return f"{self.major}:{self.minor}"


@dataclass(frozen=True)
class BoundLoop:
    device: LoopDevice
    backing_file: str  # as the kernel reports it; may end in " (deleted)"
    read_only: bool


def pack_loop_config(fd: int, path: Path, read_only: bool) -> bytes:
    """The LOOP_CONFIGURE argument: bind ``fd``, record ``path`` as the name, optionally r/o."""
    name = os.fsencode(str(path))[: LO_NAME_SIZE - 1]
    flags = LO_FLAGS_READ_ONLY if read_only else 0
    zeros8 = (0,) * 8
    return _LOOP_CONFIG.pack(fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0, *zeros8)


def _device(number: int) -> LoopDevice:
    st = Path(f"/dev/loop{number}").stat()
    return LoopDevice(number, os.major(st.st_rdev), os.minor(st.st_rdev))


def _get_free() -> int:
    try:
        ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(f"open {LOOP_CONTROL}: {e.strerror} (no loop device support?)") from e
    try:
        return fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    except OSError as e:
        raise DeviceError(f"LOOP_CTL_GET_FREE on {LOOP_CONTROL}: {e.strerror}") from e
    finally:
        os.close(ctl)


def _configure(number: int, backing_fd: int, path: Path, read_only: bool) -> bool:
    """Bind the file to loopN; False when someone else bound it first."""
    dev = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(dev, LOOP_CONFIGURE, pack_loop_config(backing_fd, path, read_only))
        return True
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        raise DeviceError(f"LOOP_CONFIGURE /dev/loop{number} with {path}: {e.strerror}") from e
    finally:
        os.close(dev)


def attach(path: Path, read_only: bool) -> LoopDevice:
    """Bind ``path`` to a free loop device (read-only or read-write) and return it."""
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        backing = os.open(path, flags)
    except OSError as e:
        raise DeviceError(f"open {path} for a loop device: {e.strerror}") from e
    try:
        for _ in range(_ATTACH_ATTEMPTS):
            number = _get_free()
            if _configure(number, backing, path, read_only):
                return _device(number)
        raise DeviceError(
            f"no loop device for {path}: {_ATTACH_ATTEMPTS} free devices were taken by others"
        )
    finally:
        # The kernel holds its own reference to the file once bound.
        os.close(backing)


def detach(device: LoopDevice) -> None:
    """Unbind the device.  Already unbound is fine; if something still holds it open
    (a dm table, a mount), the kernel detaches it when the last holder lets go."""
    try:
        fd = os.open(device.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as e:
        raise DeviceError(f"open {device.path} to detach it: {e.strerror}") from e
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as e:
        if e.errno != errno.ENXIO:  # ENXIO: not bound
            raise DeviceError(f"LOOP_CLR_FD {device.path}: {e.strerror}") from e
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().rstrip("\n")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO):  # detached while we looked
            return None
        raise


def bound() -> list[BoundLoop]:
    """Every loop device that has a backing file right now."""
    out = []
    for entry in sorted(SYS_BLOCK.glob("loop[0-9]*")):
        backing = _read(entry / "loop" / "backing_file")
        dev = _read(entry / "dev")
        if backing is None or dev is None:
            continue
        major, minor = (int(x) for x in dev.split(":"))
        read_only = _read(entry / "ro") == "1"
        number = int(entry.name.removeprefix("loop"))
        out.append(BoundLoop(LoopDevice(number, major, minor), backing, read_only))
    return out


def find_backed_by(path: Path) -> list[LoopDevice]:
    """The loop devices whose backing file is ``path`` (compared as resolved paths)."""
    want = str(path.resolve())
    return [b.device for b in bound() if b.backing_file == want]
