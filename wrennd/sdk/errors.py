"""The SDK's exceptions: one class per API error code, so callers catch what they mean.

Every class carries the daemon's ``code``, ``message`` and ``data`` object
(``data["type"]`` is the stable snake_case name; the other keys depend on the
error, such as ``id`` or ``state``).
"""

from __future__ import annotations

from typing import Any

from wrennd.rpc import errors as codes
from wrennd.rpc.client import ClientError, RemoteError


class WrennError(Exception):
    """Base of every SDK error."""

    code: int = 0

    def __init__(self, message: str, code: int | None = None, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.data: dict[str, Any] = data or {}


class ConnectionFailed(WrennError):
    """The daemon could not be reached (not running, no permission) or the connection broke."""


class DaemonError(WrennError):
    """The daemon answered with an error this SDK has no class for (or an internal error)."""


class BadRequest(WrennError):
    """The request was malformed or its params invalid (JSON-RPC -32700..-32602, -32001)."""


class ShuttingDown(WrennError):
    code = codes.SHUTTING_DOWN


class SandboxNotFound(WrennError):
    code = codes.SANDBOX_NOT_FOUND


class WrongState(WrennError):
    """The sandbox's state does not allow the call (``data["state"]`` says which it is in)."""

    code = codes.WRONG_STATE


class TemplateInUse(WrennError):
    code = codes.TEMPLATE_IN_USE


class ResourceExhausted(WrennError):
    code = codes.RESOURCE_EXHAUSTED


class VmmFailure(WrennError):
    code = codes.VMM_FAILURE


class GuestFailure(WrennError):
    """The guest agent refused or failed (``data["code"]`` is its errno-like code)."""

    code = codes.GUEST_FAILURE


class NotFound(WrennError):
    """A template, image, transfer or session does not exist."""

    code = codes.NOT_FOUND


class ImageInUse(WrennError):
    code = codes.IMAGE_IN_USE


class StorageFailure(WrennError):
    code = codes.STORAGE_FAILURE


class SnapshotCorrupt(WrennError):
    code = codes.SNAPSHOT_CORRUPT


class GuestUnavailable(WrennError):
    """The guest did not answer within the call's deadline (``data["reason"]``: deadline,
    vmm_stopped, preempted by a pause or destroy, or unreachable)."""

    code = codes.GUEST_UNAVAILABLE


class TransferFailed(WrennError):
    """An upload or download ended with a size or sha256 that does not match."""


BY_CODE: dict[int, type[WrennError]] = {
    cls.code: cls
    for cls in (
        ShuttingDown,
        SandboxNotFound,
        WrongState,
        TemplateInUse,
        ResourceExhausted,
        VmmFailure,
        GuestFailure,
        NotFound,
        ImageInUse,
        StorageFailure,
        SnapshotCorrupt,
        GuestUnavailable,
    )
}
_BAD_REQUEST = {
    codes.PARSE_ERROR,
    codes.INVALID_REQUEST,
    codes.METHOD_NOT_FOUND,
    codes.INVALID_PARAMS,
    codes.MESSAGE_TOO_LARGE,
}


def translate(error: Exception) -> Exception:
    """The SDK exception for a client-layer error (others are returned unchanged)."""
    if isinstance(error, RemoteError):
        cls = BY_CODE.get(error.code)
        if cls is None:
            cls = BadRequest if error.code in _BAD_REQUEST else DaemonError
        return cls(error.message, error.code, error.data)
    if isinstance(error, ClientError):
        return ConnectionFailed(str(error))
    return error
