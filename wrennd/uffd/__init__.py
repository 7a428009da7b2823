"""Userfaultfd: the asyncio side of the native engine (DESIGN.md §5).

- ``wrennd.uffd.handshake``: Firecracker's region message, encoded and parsed.
- ``wrennd.uffd.engine`` / ``wrennd.uffd.server``: the fault-serving engine and
  the ``UffdServer`` that accepts one Firecracker and runs it.

The VMM side of the handshake (what Firecracker does) is simulator code:
``wrennd_sim.uffd_peer``.
"""
