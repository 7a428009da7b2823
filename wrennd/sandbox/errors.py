"""Typed errors of the sandbox manager; the RPC layer maps each to its error code."""

from __future__ import annotations

from wrennd.sandbox.state import WrongState

__all__ = [
    "GuestFailed",
    "ImageNotFound",
    "LifecycleError",
    "NoCapacity",
    "SandboxNotFound",
    "VmmFailed",
    "WrongState",
]


class LifecycleError(Exception):
    """Base class: an operation on a sandbox failed; the message says which and why."""


class SandboxNotFound(LifecycleError):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"no sandbox {sandbox_id}")
        self.sandbox_id = sandbox_id


class ImageNotFound(LifecycleError):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(f"no image {name!r} (expected {path})")
        self.name = name


class NoCapacity(LifecycleError):
    """A host resource ran out (network slots)."""

    def __init__(self, resource: str, detail: str) -> None:
        super().__init__(f"{resource} exhausted: {detail}")
        self.resource = resource


class VmmFailed(LifecycleError):
    """The VMM refused a request, died, or did not start."""


class GuestFailed(LifecycleError):
    """The guest agent did not come up or refused a lifecycle request."""
