"""Rootfs copy-on-write storage (DESIGN.md §6): devicemapper, reflink and copy backends.

``open_storage(settings.storage_backend, settings.state_dir)`` picks a backend
(``auto``: the first that works, logged with why) and returns an
``AsyncStorage`` whose methods run the blocking work on an executor.  The
backends themselves (``wrennd.storage.backend.StorageBackend``) are blocking.
"""

from wrennd.storage.aio import AsyncStorage, open_storage
from wrennd.storage.backend import RootfsRecord, StaleReport, StorageBackend
from wrennd.storage.choose import choose_backend
from wrennd.storage.devicemapper import DeviceMapperBackend
from wrennd.storage.errors import (
    BackendUnavailable,
    BadBaseImage,
    BadSandboxId,
    BaseImageInUse,
    BaseImageMissing,
    DeviceError,
    FlattenTargetExists,
    NoSpace,
    RecordCorrupt,
    SandboxStorageBusy,
    SandboxStorageExists,
    SandboxStorageNotFound,
    StorageError,
    WrongAttachState,
)
from wrennd.storage.filebackends import CopyBackend, ReflinkBackend

__all__ = [
    "AsyncStorage",
    "BackendUnavailable",
    "BadBaseImage",
    "BadSandboxId",
    "BaseImageInUse",
    "BaseImageMissing",
    "CopyBackend",
    "DeviceError",
    "DeviceMapperBackend",
    "FlattenTargetExists",
    "NoSpace",
    "RecordCorrupt",
    "ReflinkBackend",
    "RootfsRecord",
    "SandboxStorageBusy",
    "SandboxStorageExists",
    "SandboxStorageNotFound",
    "StaleReport",
    "StorageBackend",
    "StorageError",
    "WrongAttachState",
    "choose_backend",
    "open_storage",
]
