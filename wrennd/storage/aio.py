"""The asyncio face of the storage backends: every blocking call runs on a small executor.

Cancelling an awaiting task does not stop an operation already running on
the executor: it finishes (or fails and cleans up after itself) in the
background, so a cancellation never leaves a half-made layer; one still
queued is dropped before it starts.  ``aclose`` waits for running ones.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from wrennd.storage.backend import RootfsRecord, StaleReport, StorageBackend
from wrennd.storage.choose import choose_backend
from wrennd.storage.errors import WrongAttachState
from wrennd.storage.keep import clone_file

T = TypeVar("T")


class AsyncStorage:
    def __init__(self, backend: StorageBackend, max_workers: int = 4) -> None:
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="wrennd-storage")

    @property
    def name(self) -> str:
        return self.backend.name

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def create(self, sandbox_id: str, base_image: Path) -> RootfsRecord:
        return await self._run(self.backend.create, sandbox_id, base_image)

    async def detach(self, sandbox_id: str) -> RootfsRecord:
        return await self._run(self.backend.detach, sandbox_id)

    async def attach(self, sandbox_id: str) -> RootfsRecord:
        return await self._run(self.backend.attach, sandbox_id)

    async def flatten(self, sandbox_id: str, dest: Path) -> Path:
        return await self._run(self.backend.flatten, sandbox_id, dest)

    async def remove(self, sandbox_id: str) -> None:
        await self._run(self.backend.remove, sandbox_id)

    async def record(self, sandbox_id: str) -> RootfsRecord:
        return await self._run(self.backend.record, sandbox_id)

    async def keep_layer(self, sandbox_id: str, dest: Path) -> str:
        """Copy the sandbox's layer as it is now to ``dest`` (reflink where possible)."""
        rec = await self.record(sandbox_id)
        return await self._run(clone_file, rec.layer, dest)

    async def restore_layer(self, sandbox_id: str, src: Path) -> str:
        """Put a kept layer back (the rootfs must be detached: no VMM uses it)."""
        rec = await self.record(sandbox_id)
        if rec.attached:
            raise WrongAttachState(sandbox_id, True, "restore its layer")
        return await self._run(clone_file, src, rec.layer)

    async def delete_base(self, base_image: Path) -> None:
        await self._run(self.backend.delete_base, base_image)

    async def cleanup_stale(self, running_ids: Iterable[str]) -> StaleReport:
        return await self._run(self.backend.cleanup_stale, list(running_ids))

    async def aclose(self) -> None:
        """Wait for running operations, then stop the executor's threads."""
        await asyncio.to_thread(self._executor.shutdown, True)

    async def __aenter__(self) -> AsyncStorage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_storage(kind: str, state_dir: Path) -> AsyncStorage:
    """Probe and pick the backend (``auto`` or a name) off the loop; wrap it for asyncio."""
    backend = await asyncio.to_thread(choose_backend, kind, state_dir)
    return AsyncStorage(backend)
