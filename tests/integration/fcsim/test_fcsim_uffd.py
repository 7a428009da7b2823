"""boot -> pause -> Full -> load (Uffd) -> resume -> pause -> Diff -> load (Uffd), checksums equal.

The page-fault side is a small real handler: it accepts fcsim's handshake
(parsed with wrennd.uffd.handshake), then serves every fault with
UFFDIO_COPY from the memory file, in a thread, until fcsim closes the socket.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import mmap
import os
import select
import shutil
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from wrennd.fcsim.harness import SimHandle
from wrennd.uffd import handshake
from wrennd.vm.api import MemBackend
from wrennd.vm.errors import FirecrackerError

pytestmark = [pytest.mark.uffd]

UFFD_EVENT_PAGEFAULT = 0x12
UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy)
MSG_SIZE = 32  # sizeof(struct uffd_msg)
MEM_MIB = 32
PAGE = 4096


class MemfileHandler(threading.Thread):
    """Serves one VMM's faults from a memory file until the VMM closes the socket."""

    def __init__(self, socket_path: Path, memfile: Path) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(socket_path))
        self.listener.listen(1)
        self.memfile = memfile
        self.faults = 0
        self.regions: list[handshake.Region] = []
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as e:
            self.error = e
        finally:
            self.listener.close()

    def _receive(self, conn: socket.socket) -> int:
        msg, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4))
        self.regions = handshake.parse(msg)
        self.ready.set()
        fds = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:4])
        assert len(fds) == 1, "the uffd comes with the handshake"
        return fds[0]

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        uffd = self._receive(conn)
        with open(self.memfile, "rb") as f:
            # A private writable mapping, so ctypes can give its address.
            src = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        pin = ctypes.c_char.from_buffer(src)
        try:
            poller = select.poll()
            poller.register(uffd, select.POLLIN)
            poller.register(conn, select.POLLIN)
            while True:
                for fd, _ in poller.poll(1000):
                    if fd == conn.fileno() and not conn.recv(1):
                        return  # EOF: the VMM is gone
                    if fd == uffd:
                        self._drain(uffd, ctypes.addressof(pin))
        finally:
            del pin
            src.close()
            os.close(uffd)
            conn.close()

    def _drain(self, uffd: int, src_addr: int) -> None:
        try:
            data = os.read(uffd, MSG_SIZE * 64)
        except BlockingIOError:
            return
        for i in range(0, len(data), MSG_SIZE):
            if data[i] != UFFD_EVENT_PAGEFAULT:
                continue
            (address,) = struct.unpack_from("=Q", data, i + 16)  # msg.arg.pagefault.address
            page_addr = address & ~(PAGE - 1)
            region = next(r for r in self.regions if r.contains_address(page_addr))
            offset = region.offset + page_addr - region.base_host_virt_addr
            copy = struct.pack("=QQQQq", page_addr, src_addr + offset, PAGE, 0, 0)
            self.faults += 1  # counted before the copy wakes the faulting thread
            try:
                fcntl.ioctl(uffd, UFFDIO_COPY, copy)
            except OSError as e:
                if e.errno != errno.EEXIST:  # already present: nothing to do
                    raise


async def boot(sim: SimHandle, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    await sim.client.put_machine_config(1, MEM_MIB, track_dirty_pages=True)
    await sim.client.put_boot_source(str(kernel))
    await sim.client.start()


async def load_uffd(sim: SimHandle, vmstate: Path, memfile: Path, sock: Path) -> MemfileHandler:
    handler = MemfileHandler(sock, memfile)
    handler.start()
    await sim.client.load_snapshot(
        str(vmstate), MemBackend("Uffd", str(sock)), track_dirty_pages=True
    )
    return handler


def overlay(diff: Path, base: Path) -> None:
    """Write a Diff's data runs (SEEK_DATA/SEEK_HOLE) over its base."""
    with open(diff, "rb") as src, open(base, "r+b") as dst:
        size = os.fstat(src.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            dst.seek(start)
            dst.write(os.pread(src.fileno(), end - start, start))
            pos = end


async def test_full_and_diff_through_the_uffd_backend(launch: Any, tmp_path: Path) -> None:
    first: SimHandle = await launch("uf-a")
    await boot(first, tmp_path)
    await first.control.call("dirty", fraction=0.3, seed=11)
    await first.client.pause()
    booted = await first.control.checksum()
    await first.client.create_snapshot(
        str(tmp_path / "full.vmstate"), str(tmp_path / "full.mem"), "Full"
    )
    await first.close()

    second: SimHandle = await launch("uf-b")
    handler = await load_uffd(
        second, tmp_path / "full.vmstate", tmp_path / "full.mem", tmp_path / "uffd-b.sock"
    )
    info = await second.control.call("info")
    assert info["backend"] == "Uffd" and info["state"] == "Paused"
    assert handler.ready.wait(10), "fcsim sent no handshake"
    assert handler.regions[0].size == MEM_MIB << 20
    assert await second.control.checksum() == booted
    assert handler.faults >= (MEM_MIB << 20) // PAGE, "every page came through the handler"
    await second.client.resume()
    await second.control.call("dirty", fraction=0.05, seed=12)
    touched = await second.control.call("touch", count=500, order="random", seed=5, write=True)
    assert touched["pages"] == 500
    await second.client.pause()
    after_diff = await second.control.checksum()
    assert after_diff != booted
    await second.client.create_snapshot(
        str(tmp_path / "diff.vmstate"), str(tmp_path / "diff.mem"), "Diff"
    )
    await second.close()
    handler.join(10)
    assert not handler.is_alive(), "fcsim's exit must close the handshake socket (EOF)"
    assert handler.error is None

    merged = tmp_path / "merged.mem"
    shutil.copyfile(tmp_path / "full.mem", merged)
    overlay(tmp_path / "diff.mem", merged)
    third: SimHandle = await launch("uf-c")
    handler3 = await load_uffd(third, tmp_path / "diff.vmstate", merged, tmp_path / "uffd-c.sock")
    assert await third.control.checksum() == after_diff
    await third.client.resume()
    assert (await third.client.describe_instance())["state"] == "Running"
    await third.close()
    handler3.join(10)
    assert handler3.error is None


async def test_uffd_load_without_a_handler_is_refused(launch: Any, tmp_path: Path) -> None:
    first: SimHandle = await launch("uf-x")
    await boot(first, tmp_path)
    await first.client.pause()
    await first.client.create_snapshot(str(tmp_path / "s"), str(tmp_path / "m"), "Full")
    await first.close()
    sim: SimHandle = await launch("uf-y")
    with pytest.raises(FirecrackerError, match="Cannot load snapshot memory"):
        await sim.client.load_snapshot(
            str(tmp_path / "s"),
            MemBackend("Uffd", str(tmp_path / "nobody.sock")),
            track_dirty_pages=False,
        )
    # Like Firecracker after a failed load, the process takes nothing more.
    with pytest.raises(FirecrackerError, match="unusable"):
        await sim.client.resume()
