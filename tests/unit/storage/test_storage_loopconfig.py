"""The LOOP_CONFIGURE argument matches struct loop_config of <linux/loop.h>."""

from __future__ import annotations

import struct
from pathlib import Path

from wrennd.storage.loopdev import LO_FLAGS_READ_ONLY, LoopDevice, pack_loop_config


def test_layout() -> None:
    raw = pack_loop_config(17, Path("/var/lib/wrennd/images/base.ext4"), read_only=True)
    assert len(raw) == 304  # 8 + sizeof(loop_info64) 232 + 8 * 8 reserved
    fd, block_size = struct.unpack_from("=II", raw, 0)
    assert (fd, block_size) == (17, 0)
    info = 8
    offset, sizelimit = struct.unpack_from("=QQ", raw, info + 24)
    assert (offset, sizelimit) == (0, 0)
    (flags,) = struct.unpack_from("=I", raw, info + 52)
    assert flags == LO_FLAGS_READ_ONLY
    name = raw[info + 56 : info + 56 + 64]
    assert name.rstrip(b"\0") == b"/var/lib/wrennd/images/base.ext4"
    assert raw[info + 56 + 64 :] == bytes(len(raw) - info - 120)


def test_read_write_and_long_names() -> None:
    raw = pack_loop_config(3, Path("/" + "x" * 200), read_only=False)
    assert struct.unpack_from("=I", raw, 8 + 52) == (0,)
    name = raw[8 + 56 : 8 + 56 + 64]
    assert name[-1] == 0 and len(name.rstrip(b"\0")) == 63  # truncated, NUL-terminated


def test_device_names() -> None:
    d = LoopDevice(12, 7, 12)
    assert str(d.path) == "/dev/loop12" and d.devno == "7:12"
