"""JSON-RPC error codes and the typed errors handlers raise.

Standard codes come from the JSON-RPC 2.0 specification.  The daemon's own
server errors use the range the specification reserves for implementations
(-32000 to -32099).  Application errors (what went wrong with a sandbox, a
template, the VMM or the guest) use positive codes so that a client can tell
"your request was malformed" from "your request was fine but failed".

Every error carries a ``data`` object with at least ``type``, a stable
snake_case name clients switch on; the remaining keys are specific to the
error (``sandbox_id``, ``state``, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

# JSON-RPC 2.0 standard codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors.
MESSAGE_TOO_LARGE = -32001
SHUTTING_DOWN = -32002
# Application errors.
SANDBOX_NOT_FOUND = 1001
WRONG_STATE = 1002
TEMPLATE_IN_USE = 1003
RESOURCE_EXHAUSTED = 1004
VMM_FAILURE = 1005
GUEST_FAILURE = 1006
NOT_FOUND = 1007
IMAGE_IN_USE = 1008
STORAGE_FAILURE = 1009
SNAPSHOT_CORRUPT = 1010
GUEST_UNAVAILABLE = 1011


class RpcError(Exception):
    """An error that becomes a JSON-RPC error object in the response."""

    code: ClassVar[int] = INTERNAL_ERROR
    type: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, **data: Any) -> None:
        self.message = message or self.default_message
        self.data: dict[str, Any] = {"type": self.type, **data}
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}


class ParseError(RpcError):
    code = PARSE_ERROR
    type = "parse_error"
    default_message = "Parse error"


class InvalidRequest(RpcError):
    code = INVALID_REQUEST
    type = "invalid_request"
    default_message = "Invalid Request"


class MethodNotFound(RpcError):
    code = METHOD_NOT_FOUND
    type = "method_not_found"
    default_message = "Method not found"


class InvalidParams(RpcError):
    code = INVALID_PARAMS
    type = "invalid_params"
    default_message = "Invalid params"


class InternalError(RpcError):
    pass


class MessageTooLarge(RpcError):
    code = MESSAGE_TOO_LARGE
    type = "message_too_large"
    default_message = "Message too large"


class ShuttingDown(RpcError):
    code = SHUTTING_DOWN
    type = "shutting_down"
    default_message = "The daemon is shutting down"


class SandboxNotFound(RpcError):
    code = SANDBOX_NOT_FOUND
    type = "sandbox_not_found"
    default_message = "Sandbox not found"


class WrongState(RpcError):
    code = WRONG_STATE
    type = "wrong_state"
    default_message = "The sandbox is in the wrong state for this operation"


class TemplateInUse(RpcError):
    code = TEMPLATE_IN_USE
    type = "template_in_use"
    default_message = "The template is in use"


class ResourceExhausted(RpcError):
    code = RESOURCE_EXHAUSTED
    type = "resource_exhausted"
    default_message = "A host resource is exhausted"


class VmmFailure(RpcError):
    code = VMM_FAILURE
    type = "vmm_failure"
    default_message = "The VMM failed"


class GuestFailure(RpcError):
    code = GUEST_FAILURE
    type = "guest_failure"
    default_message = "The guest failed"


class NotFound(RpcError):
    """A named object other than a sandbox (template, image) does not exist."""

    code = NOT_FOUND
    type = "not_found"
    default_message = "Not found"


class ImageInUse(RpcError):
    code = IMAGE_IN_USE
    type = "image_in_use"
    default_message = "The image is in use"


class StorageFailure(RpcError):
    code = STORAGE_FAILURE
    type = "storage_failure"
    default_message = "The rootfs storage failed"


class SnapshotCorrupt(RpcError):
    code = SNAPSHOT_CORRUPT
    type = "snapshot_corrupt"
    default_message = "Persisted data is damaged"


class GuestUnavailable(RpcError):
    """The guest did not answer within the call's deadline (stopped, unreachable, or a
    pause or destroy ended the call); ``data.reason`` says which."""

    code = GUEST_UNAVAILABLE
    type = "guest_unavailable"
    default_message = "The guest did not answer in time"


APPLICATION_ERRORS: tuple[type[RpcError], ...] = (
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

# The one table from a sandbox-layer error code (LifecycleError.code) to its API error;
# invalid_params is how a request that cannot be carried out as asked is refused.
_MAPPED: tuple[type[RpcError], ...] = (*APPLICATION_ERRORS, InvalidParams)
BY_TYPE: dict[str, type[RpcError]] = {cls.type: cls for cls in _MAPPED}


def from_code(code: str, message: str, data: dict[str, Any]) -> RpcError:
    """The API error for a sandbox-layer error; an unknown code is a daemon bug."""
    return BY_TYPE.get(code, InternalError)(message, **data)
