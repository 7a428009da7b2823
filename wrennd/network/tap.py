"""TAP devices through /dev/net/tun (the kernel has no rtnetlink call that makes one).

A TAP is created in, and attached from, the network namespace of the calling
thread: /dev/net/tun binds to the namespace current at open(2).
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


def _ifreq(name: str, flags: int) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw:
        raise ValueError(f"bad interface name {name!r}")
    return struct.pack("16sH22x", raw, flags)


def open_tap(name: str, *, nonblocking: bool = True) -> int:
    """Attach to TAP ``name`` (creating a transient one if absent); return its fd.

    Frames are read and written whole, without packet-info header.  A TAP
    created here vanishes when its last fd closes unless made persistent.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
    fd = os.open("/dev/net/tun", flags)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, IFF_TAP | IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        raise OSError(e.errno, f"attach TAP {name!r}: {e.strerror}") from e
    return fd


def create_persistent_tap(name: str, owner_uid: int | None = None) -> None:
    """Create TAP ``name`` that outlives this call (Firecracker opens it by name later)."""
    fd = open_tap(name, nonblocking=False)
    try:
        if owner_uid is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner_uid)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)
