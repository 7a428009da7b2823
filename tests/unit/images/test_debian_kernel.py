"""images/debian_kernel.py: the vmlinux cut out of a bzImage, and the module load order.

The bzImages here are built by the test: a setup header that places a payload,
compressed the way Linux does it (the compressor's output plus the uncompressed
size as le32), around a small x86_64 ELF with a Linux version banner.  The real
Debian kernel goes through the same code in the qemu integration test.
"""

from __future__ import annotations

import gzip
import importlib.util
import lzma
import struct
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("debian_kernel", REPO / "images/debian_kernel.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


dk = _load()


def _elf(release: str = "6.1.0-99-cloud-amd64") -> bytes:
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 2, 62)
    return header.ljust(64, b"\0") + f"Linux version {release} (x@y) #1 SMP".encode() + bytes(4000)


def _bzimage(payload: bytes, setup_sects: int = 3, offset: int = 0x40) -> bytes:
    setup = bytearray(((setup_sects or 4) + 1) * 512)  # 0 means 4 sectors
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + bytes(offset) + payload + b"trailing decompressor code"


def _with_size(compressed: bytes, plain: bytes) -> bytes:
    return compressed + struct.pack("<I", len(plain))


def test_gzip_payload_is_found_and_decompressed() -> None:
    elf = _elf()
    vmlinux = dk.decompress(dk.payload(_bzimage(gzip.compress(elf))))
    assert vmlinux == elf
    assert dk.check_vmlinux(vmlinux) == "6.1.0-99-cloud-amd64"


def test_xz_payload_with_the_size_linux_appends() -> None:
    elf = _elf()
    packed = _with_size(lzma.compress(elf, format=lzma.FORMAT_XZ), elf)
    assert dk.decompress(dk.payload(_bzimage(packed, setup_sects=0))) == elf


def test_lz4_legacy_payload_as_debian_builds_it() -> None:
    elf = _elf()
    legacy = subprocess.run(["lz4", "-l", "-9", "-c"], input=elf, capture_output=True, check=True)
    assert dk.decompress(dk.payload(_bzimage(_with_size(legacy.stdout, elf)))) == elf


def test_a_wrong_size_trailer_is_refused() -> None:
    elf = _elf()
    packed = lzma.compress(elf, format=lzma.FORMAT_XZ) + struct.pack("<I", len(elf) + 1)
    with pytest.raises(dk.KernelError, match="the kernel says"):
        dk.decompress(packed)


def test_not_a_bzimage() -> None:
    with pytest.raises(dk.KernelError, match="no HdrS"):
        dk.payload(_elf())
    broken = bytearray(_bzimage(b"x" * 100))
    struct.pack_into("<I", broken, 0x24C, 1 << 30)
    with pytest.raises(dk.KernelError, match="outside the file"):
        dk.payload(bytes(broken))


def test_unknown_compression_and_non_elf_payloads_are_refused() -> None:
    with pytest.raises(dk.KernelError, match="unknown compression"):
        dk.decompress(b"\x00\x01\x02\x03" + bytes(20))
    with pytest.raises(dk.KernelError, match="not a 64-bit"):
        dk.check_vmlinux(b"MZ" + bytes(100))
    arm = bytearray(_elf())
    struct.pack_into("<H", arm, 18, 183)  # EM_AARCH64
    with pytest.raises(dk.KernelError, match="not an x86_64"):
        dk.check_vmlinux(bytes(arm))


MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/other-thing.ko:
"""


def test_load_order_puts_dependencies_first_once() -> None:
    order = dk.load_order(MODULES_DEP, ("virtio_mmio", "virtio_net"))
    names = [Path(p).stem for p in order]
    expected = ["virtio_ring", "virtio", "virtio_mmio", "failover", "net_failover", "virtio_net"]
    assert names == expected
    for i, path in enumerate(order):
        line = next(x for x in MODULES_DEP.splitlines() if x.startswith(path + ":"))
        deps = line.partition(":")[2].split()
        assert all(order.index(d) < i for d in deps), f"{path} before its dependencies"


def test_load_order_names_a_missing_module() -> None:
    with pytest.raises(dk.KernelError, match=r"virtio_blk is not in modules\.dep"):
        dk.load_order(MODULES_DEP, ("virtio_blk",))
