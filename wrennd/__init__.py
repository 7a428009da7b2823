"""wrennd: host daemon for Firecracker microVM sandboxes."""

__version__ = "0.1.0"
