"""Typed storage errors: each says what failed, on which path or sandbox, and why."""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base of every error the storage backends raise."""


class BaseImageMissing(StorageError):
    def __init__(self, path: Path, detail: str = "") -> None:
        why = f": {detail}" if detail else ""
        super().__init__(f"base image {path} does not exist or is not a regular file{why}")
        self.path = path


class BadBaseImage(StorageError):
    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"base image {path} cannot be used: {detail}")
        self.path = path


class BaseImageInUse(StorageError):
    def __init__(self, path: Path, sandbox_ids: list[str]) -> None:
        ids = ", ".join(sorted(sandbox_ids))
        super().__init__(f"base image {path} is in use by sandbox(es) {ids}: remove them first")
        self.path = path
        self.sandbox_ids = sorted(sandbox_ids)


class NoSpace(StorageError):
    """The filesystem filled up (ENOSPC/EDQUOT); whatever was half-made has been removed."""

    def __init__(self, operation: str, path: Path, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"{operation}: no space left on the filesystem of {path}{why}; nothing was kept"
        )
        self.operation = operation
        self.path = path


class SandboxStorageExists(StorageError):
    def __init__(self, sandbox_id: str, path: Path) -> None:
        super().__init__(f"sandbox {sandbox_id} already has a rootfs at {path}")
        self.sandbox_id = sandbox_id


class SandboxStorageNotFound(StorageError):
    def __init__(self, sandbox_id: str, path: Path) -> None:
        super().__init__(f"sandbox {sandbox_id} has no rootfs record at {path}")
        self.sandbox_id = sandbox_id


class RecordCorrupt(StorageError):
    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"rootfs record {path} is unreadable: {detail}")
        self.path = path


class SandboxStorageBusy(StorageError):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id}: another storage operation is in progress")
        self.sandbox_id = sandbox_id


class WrongAttachState(StorageError):
    def __init__(self, sandbox_id: str, attached: bool, operation: str) -> None:
        state = "attached" if attached else "detached"
        super().__init__(f"sandbox {sandbox_id}: cannot {operation}, its rootfs is {state}")
        self.sandbox_id = sandbox_id


class BadSandboxId(StorageError):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(
            f"sandbox id {sandbox_id!r}: expected 1-64 characters of [A-Za-z0-9_-] "
            "(it names a directory and a device-mapper device)"
        )
        self.sandbox_id = sandbox_id


class BackendUnavailable(StorageError):
    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"storage backend {backend} cannot be used here: {reason}")
        self.backend = backend
        self.reason = reason


class DeviceError(StorageError):
    """A loop or device-mapper operation failed; the message carries the command or ioctl."""


class FlattenTargetExists(StorageError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"flatten target {path} already exists; refusing to overwrite it")
        self.path = path
