"""Userfaultfd: the asyncio side of the native engine (DESIGN.md §5).

- ``wrennd.uffd.handshake``: Firecracker's region message, encoded and parsed.
- ``wrennd.uffd.vmm``: the VMM side (guest memory, uffd, handshake, page toucher)
  for fcsim, tests and benchmarks.
- ``wrennd.uffd.engine`` / ``wrennd.uffd.server``: the fault-serving engine and
  the ``UffdServer`` that accepts one Firecracker and runs it.
"""
