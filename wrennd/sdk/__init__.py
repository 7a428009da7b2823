"""The Python SDK for wrennd: sandboxes, their commands and files, templates.

Blocking::

    from wrennd.sdk import Sandbox
    with Sandbox.create("base") as sb:
        print(sb.exec("uname -a").text)
        sb.files.write("/root/hello.txt", "hi")

asyncio: ``AsyncSandbox`` and ``AsyncTemplate`` have the same calls as
coroutines.  Errors are the classes in ``wrennd.sdk.errors``, one per API
error code.  docs/sdk.md has the whole surface.
"""

from wrennd.sdk.aio import AsyncFiles, AsyncSandbox, AsyncTemplate
from wrennd.sdk.errors import (
    BadRequest,
    ConnectionFailed,
    DaemonError,
    GuestFailure,
    ImageInUse,
    NotFound,
    ResourceExhausted,
    SandboxNotFound,
    ShuttingDown,
    SnapshotCorrupt,
    StorageFailure,
    TemplateInUse,
    TransferFailed,
    VmmFailure,
    WrennError,
    WrongState,
)
from wrennd.sdk.sync import Files, Sandbox, Template
from wrennd.sdk.types import ExecResult, FileInfo, SandboxInfo, Transferred

__all__ = [
    "AsyncFiles",
    "AsyncSandbox",
    "AsyncTemplate",
    "BadRequest",
    "ConnectionFailed",
    "DaemonError",
    "ExecResult",
    "FileInfo",
    "Files",
    "GuestFailure",
    "ImageInUse",
    "NotFound",
    "ResourceExhausted",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "ShuttingDown",
    "SnapshotCorrupt",
    "StorageFailure",
    "Template",
    "TemplateInUse",
    "TransferFailed",
    "Transferred",
    "VmmFailure",
    "WrennError",
    "WrongState",
]
