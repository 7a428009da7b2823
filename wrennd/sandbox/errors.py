"""Every error the sandbox layer raises, each carrying its API code and its data.

``LifecycleError.code`` is the stable snake_case name the API reports (the RPC
layer maps codes to JSON-RPC errors through one table) and ``data`` the facts a
client switches on.  Errors of the packages below (storage, the guest agent)
are lifted into these at the sandbox boundary by ``lifted``, through the table
``_LIFTS``: nothing above this package sees a lower package's exception types.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from wrennd.guest.client import AgentUnavailable, GuestError
from wrennd.guest.session import SessionError
from wrennd.snapshot.errors import ChainChangedError, ChecksumError, IngestError, SnapshotError
from wrennd.storage.errors import BaseImageInUse, NoSpace, StorageError
from wrennd.storage.holders import DriveInUse

if TYPE_CHECKING:
    from wrennd.sandbox.record import SandboxState


class LifecycleError(Exception):
    """An operation on a sandbox, image or template failed; the message says why."""

    code: ClassVar[str] = "lifecycle_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.data: dict[str, Any] = data


class SandboxNotFound(LifecycleError):
    code = "sandbox_not_found"

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"no sandbox {sandbox_id}", id=sandbox_id)
        self.sandbox_id = sandbox_id


class WrongState(LifecycleError):
    """An operation was asked of a sandbox in a state that does not allow it."""

    code = "wrong_state"

    def __init__(self, sandbox_id: str, state: SandboxState, operation: str) -> None:
        super().__init__(
            f"sandbox {sandbox_id} is {state.value}: cannot {operation}",
            id=sandbox_id,
            state=state.value,
        )
        self.sandbox_id = sandbox_id
        self.state = state
        self.operation = operation


class NotFound(LifecycleError):
    """A named image or template does not exist."""

    code = "not_found"


class ImageNotFound(NotFound):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(f"no image {name!r} (expected {path})", image=name)
        self.name = name


class TemplateNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no template {name!r}", template=name)
        self.name = name


class TemplateInUse(LifecycleError):
    code = "template_in_use"

    def __init__(self, name: str, sandbox_ids: list[str]) -> None:
        super().__init__(
            f"template {name!r} is used by sandboxes {', '.join(sandbox_ids)}",
            template=name,
            sandboxes=sandbox_ids,
        )
        self.name = name
        self.sandbox_ids = sandbox_ids


class ImageInUse(LifecycleError):
    code = "image_in_use"

    def __init__(self, name: str, users: list[str]) -> None:
        super().__init__(
            f"image {name!r} is used by {', '.join(users)}", image=name, sandboxes=users
        )
        self.name = name
        self.users = users


class Refused(LifecycleError):
    """The request names something that cannot be made as asked (the API's invalid params)."""

    code = "invalid_params"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message, errors=[{"path": "", "message": message}], **data)


class TemplateExists(Refused):
    def __init__(self, name: str) -> None:
        super().__init__(f"template {name!r} already exists", template=name)
        self.name = name


class TemplateMismatch(Refused):
    """A clone asked for other vcpus or memory than its template was taken with."""


class ImageExists(Refused):
    def __init__(self, name: str) -> None:
        super().__init__(f"image {name!r} already exists", image=name)
        self.name = name


class BadImage(Refused):
    """A file offered as an image is not a usable ext4 image."""


class NoCapacity(LifecycleError):
    """A host resource ran out (network slots, disk)."""

    code = "resource_exhausted"

    def __init__(self, resource: str, detail: str) -> None:
        super().__init__(f"{resource} exhausted: {detail}", resource=resource)
        self.resource = resource


class VmmFailed(LifecycleError):
    """The VMM refused a request, died, or did not start."""

    code = "vmm_failure"


class PauseUndone(VmmFailed):
    """The pause failed; the guest was thawed and resumed and keeps running."""

    def __init__(self, message: str) -> None:
        super().__init__(message, state="running")


class PauseUndoneNoSpace(PauseUndone):
    """The pause ran out of disk; the guest keeps running (the API's resource_exhausted)."""

    code = "resource_exhausted"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.data["resource"] = "disk"


class GuestFailed(LifecycleError):
    """The guest agent did not come up, refused a request or could not be reached."""

    code = "guest_failure"


class GuestUnavailable(LifecycleError):
    """The guest did not answer in time: its deadline passed, its VMM is stopped, it
    could not be reached, or a lifecycle call (pause, destroy) ended the call."""

    code = "guest_unavailable"


class StorageFailed(LifecycleError):
    """The rootfs storage backend failed (not the VMM, not the guest)."""

    code = "storage_failure"


class SnapshotCorrupt(LifecycleError):
    """Persisted data (a template's metadata, a snapshot file) is damaged."""

    code = "snapshot_corrupt"


# A lower package's error -> the lifecycle error it is; the first matching row wins,
# so a subclass comes before its base.
_LIFTS: tuple[tuple[type[Exception], Callable[[Any], LifecycleError]], ...] = (
    (NoSpace, lambda e: NoCapacity("disk", str(e))),
    (BaseImageInUse, lambda e: ImageInUse(e.path.stem, e.sandbox_ids)),
    (DriveInUse, lambda e: StorageFailed(str(e), drive=str(e.drive), holders=e.holders)),
    (StorageError, lambda e: StorageFailed(str(e))),
    # Damaged persisted data, not a daemon bug: its own code, naming the file.
    (SnapshotError, lambda e: _snapshot_error(e)),
    (GuestError, lambda e: GuestFailed(e.message, code=e.code, status=e.status)),
    (ChecksumError, lambda e: SnapshotCorrupt(str(e), file=str(e.path), block=e.block)),
    (AgentUnavailable, lambda e: GuestUnavailable(str(e), reason="unreachable")),
    (SessionError, lambda e: GuestFailed(e.message, code=e.code)),
)


def _snapshot_error(e: SnapshotError) -> LifecycleError:
    if isinstance(e, IngestError | ChainChangedError):
        return VmmFailed(str(e))  # what the VMM wrote, or a race: not damage at rest
    return SnapshotCorrupt(str(e), file=e.file)


def lift(error: Exception) -> LifecycleError | None:
    """The lifecycle error a lower package's error stands for; None: not one of theirs."""
    for kind, make in _LIFTS:
        if isinstance(error, kind):
            return make(error)
    return None


@contextlib.contextmanager
def lifting() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        lifted_error = lift(e)
        if lifted_error is None:
            raise
        raise lifted_error from e


P = ParamSpec("P")
T = TypeVar("T")


def lifted(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a public coroutine of the sandbox layer: lower errors leave it lifted."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with lifting():
            return await fn(*args, **kwargs)

    return wrapper
