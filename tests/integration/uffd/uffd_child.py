"""The guest side of the cross-process tests: a stand-in Firecracker.

Usage: uffd_child.py SOCKET PLAN.json

It maps the plan's regions, registers them with a uffd, sends the handshake
to SOCKET and runs the plan's operations in order (reads land in files named
by the plan), then exits, which closes the socket as a dying Firecracker
does.  Operations:

  {"op": "read", "offset": o, "length": n, "out": path}
  {"op": "write", "offset": o, "data": hex}
  {"op": "discard", "offset": o, "length": n}
  {"op": "touch", "region": i, "pages": [...], "write": bool}
  {"op": "wait"}          print "waiting", block until a line arrives on stdin
  {"op": "race", "pages": n, "discards": [...], "out": path}
      a reader thread reads pages 0..n-1 (first 8 bytes of each, in order)
      while the main thread discards the listed pages one by one; the
      reader's values go to `out` (8 bytes per page)
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from wrennd_sim import uffd_peer


def race(guest: uffd_peer.UffdGuest, op: dict[str, object]) -> None:
    npages = int(op["pages"])  # type: ignore[call-overload]
    page = guest.page_size
    values: list[bytes] = []

    def reader() -> None:
        for p in range(npages):
            values.append(guest.read(p * page, 8))

    t = threading.Thread(target=reader)
    t.start()
    for p in op["discards"]:  # type: ignore[attr-defined]
        guest.discard(int(p) * page, page)
    t.join()
    Path(str(op["out"])).write_bytes(b"".join(values))


def run(guest: uffd_peer.UffdGuest, op: dict[str, object]) -> None:
    kind = op["op"]
    if kind == "read":
        data = guest.read(int(op["offset"]), int(op["length"]))  # type: ignore[call-overload]
        Path(str(op["out"])).write_bytes(data)
    elif kind == "write":
        guest.write(int(op["offset"]), bytes.fromhex(str(op["data"])))  # type: ignore[call-overload]
    elif kind == "discard":
        guest.discard(int(op["offset"]), int(op["length"]))  # type: ignore[call-overload]
    elif kind == "touch":
        m = guest.memories[int(op["region"])]  # type: ignore[call-overload]
        m.touch(list(op["pages"]), write=bool(op.get("write")))  # type: ignore[call-overload]
    elif kind == "wait":
        print("waiting", flush=True)
        sys.stdin.readline()
    elif kind == "race":
        race(guest, op)
    else:
        raise SystemExit(f"unknown op {kind!r}")


def main() -> None:
    sock_path, plan_path = sys.argv[1], sys.argv[2]
    plan = json.loads(Path(plan_path).read_text())
    with uffd_peer.UffdGuest(
        plan["regions"], plan.get("page_size", uffd_peer.BASE_PAGE_SIZE), plan.get("thp", False)
    ) as guest:
        guest.handshake(sock_path, plan.get("fields", ["page_size", "page_size_kib"]))
        print("connected", flush=True)
        for op in plan["ops"]:
            run(guest, op)
    print("done", flush=True)


if __name__ == "__main__":
    main()
