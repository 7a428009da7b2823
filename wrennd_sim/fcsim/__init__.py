"""fcsim: a Firecracker-compatible simulator for hosts without KVM or a Firecracker binary.

Same command line, same HTTP API (validated against the shipped v1.16.1 spec),
same snapshot file semantics and UFFD handshake; the "guest" is the rootfs's
own init run in namespaces. See the README section "fcsim" for what it does
not simulate.
"""

FIRECRACKER_VERSION = "1.16.1"
