#!/usr/bin/env python3
"""The Firecracker stand-in of bench/faultin.py, run as its child process.

Reads one JSON command per line on stdin, answers one JSON line on stdout:

  {"cmd": "uffd", "size": N, "socket": P, "pattern": X, "seed": S, "write": B, "lat": F}
      map N bytes as Firecracker does, register a uffd, send the handshake to
      P, answer {"ready": true}, wait for a "go" line, touch the pattern with
      the native toucher, write the per-touch latencies (u64 ns) to F, answer
      {"seconds": T, "pages": K}, then unmap and close (the handler sees EOF).
  {"cmd": "file", "size": N, "path": P, ...}
      the same over P mapped MAP_PRIVATE (Firecracker's File backend), no uffd.
"""

from __future__ import annotations

import array
import json
import mmap
import random
import sys
import time
from pathlib import Path
from typing import Any

from wrennd_sim import uffd_peer
from wrennd_sim._simnative import ffi, lib

PAGE = uffd_peer.BASE_PAGE_SIZE
CLUSTER_PAGES = 16  # ws10 clusters: 64 KiB


def order(pattern: str, npages: int, seed: int) -> array.array[int]:
    if pattern == "ws10":  # 10 % of memory in 64 KiB clusters, clusters in random order
        rng = random.Random(seed)
        clusters = rng.sample(range(npages // CLUSTER_PAGES), max(1, npages // CLUSTER_PAGES // 10))
        out = array.array("Q")
        for c in clusters:
            out.extend(range(c * CLUSTER_PAGES, (c + 1) * CLUSTER_PAGES))
        return out
    return uffd_peer.touch_order(pattern, npages, seed)  # type: ignore[arg-type]


def touch(base: int, pages: array.array[int], write: bool, lat_path: str) -> float:
    lat = array.array("Q", bytes(8 * len(pages)))
    cs = ffi.new("uint64_t *")
    t = time.perf_counter()
    lib.wr_touch(
        base, PAGE, ffi.from_buffer("uint64_t[]", pages), len(pages), int(write),
        ffi.from_buffer("uint64_t[]", lat), cs,
    )  # fmt: skip
    secs = time.perf_counter() - t
    Path(lat_path).write_bytes(lat.tobytes())
    return secs


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    for line in sys.stdin:
        c = json.loads(line)
        pages = order(c["pattern"], c["size"] // PAGE, c["seed"])
        if c["cmd"] == "uffd":
            with uffd_peer.UffdGuest([c["size"]]) as g:
                g.handshake(c["socket"])
                say({"ready": True})
                sys.stdin.readline()
                secs = touch(g.memories[0].address, pages, c["write"], c["lat"])
        else:
            with open(c["path"], "rb") as f:
                mm = mmap.mmap(
                    f.fileno(), c["size"], flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )  # fmt: skip
            buf = ffi.from_buffer(mm)
            try:
                say({"ready": True})
                sys.stdin.readline()
                secs = touch(int(ffi.cast("uintptr_t", buf)), pages, c["write"], c["lat"])
            finally:
                ffi.release(buf)
                mm.close()
        say({"seconds": secs, "pages": len(pages)})


if __name__ == "__main__":
    main()
