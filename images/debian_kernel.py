#!/usr/bin/env python3
"""Derive a Firecracker guest kernel from Debian's linux-image-cloud-amd64.

    images/debian_kernel.py [OUT]     OUT defaults to build/vmlinux; "-": only the cache

What images/fetch-kernel falls back to when the Firecracker CI kernel cannot be
fetched.  It downloads the image package that apt's candidate of
$WRENN_DEBIAN_KERNEL (default linux-image-cloud-amd64) depends on, and makes:

  OUT          the uncompressed vmlinux (ELF, what Firecracker loads on x86_64),
               cut out of the package's bzImage at the payload its setup header
               names and decompressed;
  OUT.initrd   a gzip'd newc initramfs: static busybox, images/initramfs-init as
               /init, and the modules that package builds as modules but a
               Firecracker guest needs (virtio_mmio, virtio_blk, virtio_net,
               vsock) with their dependencies, in modules.dep order;
  OUT.json     where the kernel came from (the daemon's host.info reads it).

The result is cached under $WRENN_KERNEL_CACHE (default /var/cache/wrennd/kernels)
in <package>_<version>-<hash of this script, the init and busybox>/, so the same
package version is downloaded and built once.  The kernel finds virtio-mmio
devices only through ACPI (its CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is off, and
X86_MPPARSE too), so it boots under Firecracker 1.8.0 or later, and under QEMU's
microvm machine with ACPI (make guest-smoke).  The last line printed is the cache
entry's path.
"""

from __future__ import annotations

import bz2
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
META_PACKAGE = os.environ.get("WRENN_DEBIAN_KERNEL", "linux-image-cloud-amd64")
CACHE = Path(os.environ.get("WRENN_KERNEL_CACHE", "/var/cache/wrennd/kernels"))
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (deps/debian-packages.txt)
# What a Firecracker guest needs that the cloud kernel builds as modules.
MODULES = ("virtio_mmio", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport")
MIN_FIRECRACKER = "1.8.0"  # the first release that describes virtio-mmio devices in ACPI
FORMAT = 1


class KernelError(Exception):
    """The kernel cannot be derived; the message says why."""


def say(msg: str) -> None:
    print(f"debian-kernel: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw: object) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise KernelError(f"{argv[0]} is not installed (make install installs it)") from e
    if done.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return str(done.stdout)


# -- the package ------------------------------------------------------------


def resolve_package(meta: str) -> tuple[str, str]:
    """The image package apt's candidate of ``meta`` depends on, and its exact version."""
    try:
        show = run(["apt-cache", "show", "--no-all-versions", meta])
    except KernelError as e:
        raise KernelError(f"{e} (apt-get update, with Debian's main in the sources?)") from e
    m = re.search(r"^Depends:.*?\b(linux-image-[^\s,(]+)\s*\(=\s*([^)\s]+)\)", show, re.M)
    if m is None:
        raise KernelError(f"{meta} names no linux-image-* package of an exact version")
    return m.group(1), m.group(2)


def download(package: str, version: str, into: Path) -> Path:
    """``apt-get download`` of that exact version (apt's own sources and keys)."""
    run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
        cwd=into,
    )
    debs = sorted(into.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise KernelError(f"apt-get download left {len(debs)} .deb files for {package}")
    return debs[0]


# -- vmlinux out of the bzImage ---------------------------------------------

# Magic bytes of the compressors a Linux bzImage payload may use.
GZIP, XZ, LZMA, BZIP2 = b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"BZh"
LZ4_LEGACY, ZSTD, LZO = b"\x02\x21\x4c\x18", b"\x28\xb5\x2f\xfd", b"\x89LZO"


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel, exactly where the setup header says it is (boot protocol 2.08+)."""
    if len(bzimage) < 0x260 or bzimage[0x202:0x206] != b"HdrS":
        raise KernelError("not a bzImage: no HdrS setup header at 0x202")
    (protocol,) = struct.unpack_from("<H", bzimage, 0x206)
    if protocol < 0x208:
        raise KernelError(f"boot protocol {protocol:#x} < 2.08 does not locate the payload")
    setup_sects = bzimage[0x1F1] or 4  # 0 means 4, for old kernels
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(bzimage):
        raise KernelError(f"payload at {start:#x}+{length:#x} lies outside the file")
    return bzimage[start : start + length]


def _external(argv: list[str], data: bytes) -> bytes:
    try:
        done = subprocess.run(argv, input=data, capture_output=True, check=False)
    except FileNotFoundError as e:
        raise KernelError(f"{argv[0]} is needed to decompress this kernel") from e
    if done.returncode != 0:
        raise KernelError(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def decompress(data: bytes) -> bytes:
    """The payload's contents.  Linux appends the uncompressed size (le32) to every
    format but gzip (whose trailer ends with it anyway): it checks the result."""
    (expected,) = struct.unpack_from("<I", data, len(data) - 4)
    body = data[:-4]
    if data.startswith(GZIP):
        out = zlib.decompressobj(wbits=31).decompress(data)
    elif data.startswith(XZ):
        out = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(body)
    elif data.startswith(LZMA):
        out = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(body)
    elif data.startswith(BZIP2):
        out = bz2.BZ2Decompressor().decompress(body)
    elif data.startswith(LZ4_LEGACY):
        out = _external(["lz4", "-dc"], body)
    elif data.startswith(ZSTD):
        out = _external(["zstd", "-dc"], body)
    elif data.startswith(LZO):
        out = _external(["lzop", "-dc"], body)
    else:
        raise KernelError(f"unknown compression (magic {data[:6].hex()})")
    if len(out) != expected:
        raise KernelError(f"decompressed {len(out)} bytes, the kernel says {expected}")
    return out


def check_vmlinux(elf: bytes) -> str:
    """An x86_64 executable ELF; returns the release in its Linux version banner."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise KernelError("the payload is not a 64-bit little-endian ELF")
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    if e_type != 2 or e_machine != 62:
        raise KernelError(f"ELF type {e_type}, machine {e_machine}: not an x86_64 executable")
    m = re.search(rb"Linux version (\S+) ", elf)
    if m is None:
        raise KernelError("no 'Linux version' banner in the vmlinux")
    return m.group(1).decode()


def has_interp(elf: bytes) -> bool:
    """Whether an ELF64 names a dynamic loader (PT_INTERP): busybox must not."""
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3 for i in range(phnum))


# -- the initramfs ----------------------------------------------------------


def load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Module paths in an order insmod can load them: each one's dependencies
    first (modules.dep lists them so that loading its list backwards works)."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []
    for name in wanted:
        if name not in by_name:
            raise KernelError(f"module {name} is not in modules.dep (built in, or missing?)")
        path = by_name[name]
        for p in [*reversed(deps[path]), path]:
            if p not in order:
                order.append(p)
    return order


def build_initramfs(tree: Path, release: str, order: list[str], stage: Path) -> bytes:
    """The initramfs as gzip'd newc cpio, byte-identical for the same inputs."""
    moddir = tree / "lib" / "modules" / release
    for d in ("bin", "dev", "etc", "proc", "sys", "newroot"):
        (stage / d).mkdir(parents=True)
    shutil.copy(REPO / "images" / "initramfs-init", stage / "init")
    (stage / "init").chmod(0o755)
    shutil.copy(BUSYBOX, stage / "bin" / "busybox")
    (stage / "bin" / "busybox").chmod(0o755)
    os.mknod(stage / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
    os.mknod(stage / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    for rel in order:
        target = stage / "lib" / "modules" / release / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(moddir / rel, target)
    (stage / "etc" / "wrenn-modules").write_text("".join(f"{release}/{rel}\n" for rel in order))
    names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    for name in [".", *names]:
        os.utime(stage / name, (EPOCH, EPOCH), follow_symlinks=False)
    listing = "".join(f"{n}\0" for n in [".", *names])
    archive = subprocess.run(
        ["cpio", "--create", "--null", "--quiet", "--format=newc", "--reproducible",
         "--owner=0:0"],
        input=listing.encode(), capture_output=True, cwd=stage, check=True,
    ).stdout  # fmt: skip
    return gzip.compress(archive, compresslevel=9, mtime=0)


# -- the cache --------------------------------------------------------------


def cache_key(package: str, version: str) -> str:
    h = hashlib.sha256(f"{package}={version}\n{' '.join(MODULES)}\n".encode())
    for f in (Path(__file__).resolve(), REPO / "images" / "initramfs-init", BUSYBOX):
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return f"{package}_{version}-{h.hexdigest()[:12]}"


def build_entry(package: str, version: str, entry: Path) -> None:
    """Download, extract, derive, and move the finished entry into place atomically."""
    work = Path(tempfile.mkdtemp(prefix=f".build-{entry.name}.", dir=entry.parent))
    try:
        say(f"downloading {package} {version}")
        deb = download(package, version, work)
        tree = work / "tree"
        run(["dpkg-deb", "-x", str(deb), str(tree)])
        (bzimage,) = (tree / "boot").glob("vmlinuz-*")
        release = bzimage.name[len("vmlinuz-") :]
        vmlinux = decompress(payload(bzimage.read_bytes()))
        if check_vmlinux(vmlinux) != release:
            raise KernelError(f"the vmlinux banner does not say {release}")
        if has_interp(BUSYBOX.read_bytes()):
            raise KernelError(f"{BUSYBOX} is dynamically linked: install busybox-static")
        run(["depmod", "-b", str(tree), release])
        moddep = (tree / "lib" / "modules" / release / "modules.dep").read_text()
        order = load_order(moddep, MODULES)
        initrd = build_initramfs(tree, release, order, work / "stage")
        out = work / "entry"
        out.mkdir()
        (out / "vmlinux").write_bytes(vmlinux)
        (out / "initrd").write_bytes(initrd)
        shutil.copy(tree / "boot" / f"config-{release}", out / "config")
        meta = describe(package, version, release, order, vmlinux, initrd, out / "config")
        (out / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in out.iterdir():
            f.chmod(0o444)
        os.sync()
        out.rename(entry)  # an entry is either complete or absent
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(
    package: str, version: str, release: str, order: list[str], vmlinux: bytes,
    initrd: bytes, config: Path,
) -> dict[str, object]:  # fmt: skip
    text = config.read_text()
    cmdline_devices = "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" in text
    return {
        "format": FORMAT,
        "source": "debian",
        "package": package,
        "version": version,
        "meta_package": META_PACKAGE,
        "release": release,
        "initrd": "initrd",
        "modules": [Path(p).name for p in order],
        "virtio_mmio_discovery": "acpi+cmdline" if cmdline_devices else "acpi",
        "min_firecracker": MIN_FIRECRACKER,
        "vmlinux_sha256": hashlib.sha256(vmlinux).hexdigest(),
        "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
    }


def cached_entry() -> Path:
    package, version = resolve_package(META_PACKAGE)
    entry = CACHE / cache_key(package, version)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the next finds it ready
        if (entry / "kernel.json").is_file():
            say(f"{entry.name} cached in {entry}")
        else:
            say(f"building {entry.name} (cache miss) into {CACHE}")
            build_entry(package, version, entry)
    return entry


def install(entry: Path, out: Path) -> None:
    """Copy vmlinux, OUT.initrd and OUT.json beside each other, each replaced atomically."""
    meta = json.loads((entry / "kernel.json").read_text())
    meta["initrd"] = f"{out.name}.initrd"
    meta["cache"] = str(entry)
    out.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in ((entry / "vmlinux", out), (entry / "initrd", Path(f"{out}.initrd"))):
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.chmod(0o644)
        tmp.rename(dst)
    tmp = Path(f"{out}.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.rename(f"{out}.json")  # last: it describes the two files above
    say(f"{out} ({meta['release']}, {meta['package']} {meta['version']}) and {out}.initrd")


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else str(REPO / "build" / "vmlinux")
    if os.geteuid() != 0:
        say("needs root (the initramfs holds device nodes, apt-get download as root)")
        return 1
    try:
        entry = cached_entry()
        if out != "-":
            install(entry, Path(out))
    except KernelError as e:
        say(str(e))
        return 1
    print(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
