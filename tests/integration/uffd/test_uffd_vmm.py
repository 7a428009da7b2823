"""The VMM side against the real kernel: a tiny Python handler (independent of
the engine) receives the handshake and serves faults with raw ioctls."""

from __future__ import annotations

import array
import ctypes
import fcntl
import json
import os
import select
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrennd.uffd import handshake
from wrennd_sim import uffd_peer

pytestmark = pytest.mark.uffd

UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_REMOVE = 0x15
UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy)
UFFDIO_ZEROPAGE = 0xC020AA04  # _IOWR(0xAA, 0x04, struct uffdio_zeropage)
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFDIO_COPY_BIT = 1 << 3  # _UFFDIO_COPY in the register ioctls mask
PAGE = uffd_peer.BASE_PAGE_SIZE


def page_pattern(offset: int) -> bytes:
    """Distinct content per memory-file page: its offset repeated."""
    return struct.pack("<Q", offset) * (PAGE // 8)


class MiniHandler:
    """Serves each fault with one page: pattern(offset) by UFFDIO_COPY."""

    def __init__(self, conn: socket.socket) -> None:
        msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
        self.raw = msg
        self.fds = fds
        self.regions = handshake.parse(msg)
        self.uffd = fds[0]
        self.removed: list[tuple[int, int]] = []
        self.faults = 0
        self.cond = threading.Condition()
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def offset_of(self, addr: int) -> int:
        for r in self.regions:
            if r.contains_address(addr):
                return r.offset + addr - r.base_host_virt_addr
        raise AssertionError(f"fault at {addr:#x} outside every region")

    def run(self) -> None:
        src = ctypes.create_string_buffer(PAGE)
        while True:
            ready, _, _ = select.select([self.uffd, self.stop_r], [], [])
            if self.stop_r in ready:
                return
            try:
                data = os.read(self.uffd, 32 * 16)
            except BlockingIOError:
                continue
            for i in range(0, len(data), 32):
                event = data[i]
                a, b = struct.unpack_from("<QQ", data, i + 8)
                if event == UFFD_EVENT_REMOVE:
                    # madvise returns once the event is read: record it under
                    # the lock the test waits on.
                    with self.cond:
                        self.removed.append((a, b))
                        self.cond.notify_all()
                    continue
                assert event == UFFD_EVENT_PAGEFAULT
                addr = b & ~(PAGE - 1)
                ctypes.memmove(src, page_pattern(self.offset_of(addr)), PAGE)
                arg = bytearray(struct.pack("<QQQQq", addr, ctypes.addressof(src), PAGE, 0, 0))
                self.faults += 1  # before the copy wakes the faulting thread
                fcntl.ioctl(self.uffd, UFFDIO_COPY, arg)

    def close(self) -> None:
        os.write(self.stop_w, b"x")
        self.thread.join()
        for fd in (*self.fds, self.stop_r, self.stop_w):
            os.close(fd)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "uffd.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    yield srv, path
    srv.close()


def test_uffd_created_with_event_remove() -> None:
    with uffd_peer.Userfaultfd() as u, uffd_peer.GuestMemory(16 * PAGE) as m:
        assert u.features & UFFD_FEATURE_EVENT_REMOVE
        flags = fcntl.fcntl(u.fd, fcntl.F_GETFL)
        assert flags & os.O_NONBLOCK
        assert fcntl.fcntl(u.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        ioctls = u.register(m.address, m.size)
        assert ioctls & UFFDIO_COPY_BIT
        u.unregister(m.address, m.size)
    assert u.fd == -1


def test_register_unaligned_range_is_an_oserror() -> None:
    with (
        uffd_peer.Userfaultfd() as u,
        uffd_peer.GuestMemory(4 * PAGE) as m,
        pytest.raises(OSError, match="UFFDIO_REGISTER"),
    ):
        u.register(m.address + 1, PAGE)


def test_bad_mapping_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of the page size"):
        uffd_peer.GuestMemory(PAGE + 1)
    with pytest.raises(OSError, match="mapping"):
        uffd_peer.GuestMemory(3 * PAGE, page_size=3 * PAGE)


def test_handshake_is_firecrackers_message(listener: tuple[socket.socket, Path]) -> None:
    srv, path = listener
    with uffd_peer.UffdGuest([4 * PAGE, 8 * PAGE]) as guest:
        guest.handshake(path)
        conn, _ = srv.accept()
        with conn:
            msg, fds, _, _ = socket.recv_fds(conn, 65536, 4)
            try:
                assert len(fds) == 1
                doc = json.loads(msg)
                assert doc == [
                    {
                        "base_host_virt_addr": r.base_host_virt_addr,
                        "size": r.size,
                        "offset": r.offset,
                        "page_size": PAGE,
                        "page_size_kib": PAGE,
                    }
                    for r in guest.regions
                ]
                assert b" " not in msg  # serde_json compact form
                assert [r.offset for r in guest.regions] == [0, 4 * PAGE]
                # the received fd is the same uffd: same inode as ours
                assert os.fstat(fds[0]).st_ino == os.fstat(guest.uffd.fd).st_ino  # type: ignore[union-attr]
            finally:
                for fd in fds:
                    os.close(fd)
            # the VMM keeps the socket open: no EOF yet
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(1)
            guest.close()
            conn.setblocking(True)
            assert conn.recv(1) == b""


def test_faults_served_across_regions(listener: tuple[socket.socket, Path]) -> None:
    srv, path = listener
    with uffd_peer.UffdGuest([4 * PAGE, 8 * PAGE]) as guest:
        guest.handshake(path, page_size_fields=("page_size_kib",))
        conn, _ = srv.accept()
        handler = MiniHandler(conn)
        try:
            assert b"page_size_kib" in handler.raw and b'"page_size"' not in handler.raw
            data = guest.read(0, guest.size)
            want = b"".join(page_pattern(o) for o in range(0, guest.size, PAGE))
            assert data == want
            assert handler.faults == 12
            # writes after the fault are private to the guest
            guest.write(5 * PAGE + 3, b"hello")
            assert guest.read(5 * PAGE, 8)[3:8] == b"hello"
            # discard: REMOVE event with the host range, then a fresh fault
            m, inner = guest.locate(5 * PAGE)
            guest.discard(5 * PAGE, PAGE)
            with handler.cond:
                assert handler.cond.wait_for(lambda: handler.removed, timeout=10)
            assert handler.removed == [(m.address + inner, m.address + inner + PAGE)]
            assert guest.read(5 * PAGE, PAGE) == page_pattern(5 * PAGE)
            assert handler.faults == 13
        finally:
            handler.close()
            conn.close()


def test_touch_reads_and_writes(listener: tuple[socket.socket, Path]) -> None:
    srv, path = listener
    npages = 32
    with uffd_peer.UffdGuest([npages * PAGE]) as guest:
        guest.handshake(path)
        conn, _ = srv.accept()
        handler = MiniHandler(conn)
        try:
            m = guest.memories[0]
            order = uffd_peer.touch_order("strided", npages // 2, 3)
            res = m.touch(order, write=False)
            assert res.checksum == sum(p * PAGE for p in range(npages // 2))
            assert res.latencies_ns is not None and len(res.latencies_ns) == npages // 2
            assert all(t > 0 for t in res.latencies_ns)
            upper = array.array("Q", range(npages // 2, npages))
            m.touch(upper, write=True, record_latency=False)
            for p in upper:
                got = guest.read(p * PAGE, PAGE)
                # a pure write fault: the page is served, then the index stored
                assert got[:8] == struct.pack("<Q", p)
                assert got[8:] == page_pattern(p * PAGE)[8:]
            assert handler.faults == npages
        finally:
            handler.close()
            conn.close()


def test_touch_orders() -> None:
    for pattern in ("sequential", "random", "strided"):
        order = uffd_peer.touch_order(pattern, 1000, 7)
        assert sorted(order) == list(range(1000))
    assert list(uffd_peer.touch_order("sequential", 5)) == [0, 1, 2, 3, 4]
    assert list(uffd_peer.touch_order("random", 50, 1)) != list(range(50))
    once = list(uffd_peer.touch_order("random", 50, 1))
    assert once == list(uffd_peer.touch_order("random", 50, 1))
    with pytest.raises(ValueError, match="strided"):
        uffd_peer.touch_order("strided", 10, 0)
    with pytest.raises(ValueError, match="unknown touch pattern"):
        uffd_peer.touch_order("spiral", 10)  # type: ignore[arg-type]


def test_read_trace(tmp_path: Path) -> None:
    p = tmp_path / "trace"
    p.write_text("# a trace\n3\n0x10\n\n7  # hot\n")
    assert list(uffd_peer.read_trace(p, 32)) == [3, 16, 7]
    p.write_text("40\n")
    with pytest.raises(ValueError, match=r"trace:1: page 40 outside"):
        uffd_peer.read_trace(p, 32)
    p.write_text("x\n")
    with pytest.raises(ValueError, match="not a page index"):
        uffd_peer.read_trace(p, 32)


def test_send_handshake_to_nobody_leaks_nothing(tmp_path: Path) -> None:
    before = set(Path("/proc/self/fd").iterdir())
    with uffd_peer.Userfaultfd() as u, pytest.raises(FileNotFoundError):
        regions = [handshake.Region(0, PAGE, 0, PAGE)]
        uffd_peer.send_handshake(tmp_path / "absent.sock", regions, u.fd)
    assert set(Path("/proc/self/fd").iterdir()) == before
