"""Sandboxes: lifecycle, records, images and templates (DESIGN.md sections 2, 3, 12).

This package's face, and all the API layer (wrennd.rpc) may use: the service,
its errors, the states, and the guest protocol's types a caller needs to run
a command.  Lower packages stay behind it.
"""

from wrennd.guest.protocol import CommandSpec, Exited, Output, ProtocolError, Started, b64decode
from wrennd.guest.session import GuestSession
from wrennd.sandbox.environment import Progress
from wrennd.sandbox.errors import LifecycleError
from wrennd.sandbox.images import ImageInfo
from wrennd.sandbox.record import SandboxState
from wrennd.sandbox.registry import Sandbox
from wrennd.sandbox.service import SandboxService
from wrennd.sandbox.templates import TemplateMeta
from wrennd.sandbox.timing import TimingRecord

__all__ = [
    "CommandSpec",
    "Exited",
    "GuestSession",
    "ImageInfo",
    "LifecycleError",
    "Output",
    "Progress",
    "ProtocolError",
    "Sandbox",
    "SandboxService",
    "SandboxState",
    "Started",
    "TemplateMeta",
    "TimingRecord",
    "b64decode",
]
