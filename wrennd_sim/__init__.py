"""Simulator and test support for wrennd, built from the same repository.

The daemon (``wrennd``) never imports this package: it finds the simulator by
its binary (the ``fcsim`` console script), as it finds Firecracker.

- ``wrennd_sim.fcsim``: the Firecracker-compatible simulator (DESIGN.md §10).
- ``wrennd_sim.uffd_peer``: the VMM side of Firecracker's userfaultfd
  handshake (guest memory, a registered uffd, the handshake message, a page
  toucher), for fcsim, tests and benchmarks.
- ``wrennd_sim.guest_standin``: a network namespace that is, to the network, a
  guest behind the sandbox's TAP.
- ``wrennd_sim.network_testbed``: namespaces that play the host and the outside
  world, so tests never touch the machine's own network.
- ``wrennd_sim.inproc``: the sandbox service driven in-process, with the API's
  result shapes, for tests and benchmarks.
"""
