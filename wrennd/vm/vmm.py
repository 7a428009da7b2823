"""One VMM as the sandbox layer sees it: the process and its API client together.

It turns a dead API socket into the process's exit status and log lines, and
enforces the rule that a failed snapshot load leaves the VMM unusable: the
process is killed before the error goes up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from wrennd.vm.api import MemBackend
from wrennd.vm.client import FirecrackerClient
from wrennd.vm.errors import ApiTransportError, VmmError
from wrennd.vm.launcher import VmmFiles, VmmProcess

T = TypeVar("T")


class Vmm:
    def __init__(self, proc: VmmProcess, client: FirecrackerClient) -> None:
        self.proc = proc
        self.client = client

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        files: VmmFiles,
        *,
        netns_path: Path | None = None,
        socket_timeout: float = 10.0,
        api_timeout: float = 30.0,
        on_spawn: Callable[[int], Awaitable[None]] | None = None,
    ) -> Vmm:
        proc = await VmmProcess.start(
            argv, files, netns_path=netns_path, socket_timeout=socket_timeout, on_spawn=on_spawn
        )
        client = FirecrackerClient(files.api_socket, timeout=api_timeout)
        vmm = cls(proc, client)
        try:
            await vmm.checked(client.detect_version)
        except BaseException:
            await vmm.close(grace=0.0)
            raise
        return vmm

    async def checked(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run an API call; if the socket broke because the VMM died, say so."""
        try:
            return await call()
        except ApiTransportError as e:
            if not self.proc.running:
                raise self.proc.exited_error(str(e)) from e
            raise

    async def load_snapshot(
        self,
        snapshot_path: str,
        backend: MemBackend,
        *,
        track_dirty_pages: bool,
        resume_vm: bool = False,
        network_overrides: Mapping[str, str] | None = None,
    ) -> None:
        """Load, or kill the VMM: after a failed load it cannot be used again."""
        try:
            await self.client.load_snapshot(
                snapshot_path,
                backend,
                track_dirty_pages=track_dirty_pages,
                resume_vm=resume_vm,
                network_overrides=network_overrides,
            )
        except VmmError:
            await self.close(grace=0.0)
            raise

    async def close(self, grace: float = 5.0) -> int:
        await self.client.close()
        return await self.proc.stop(grace=grace)
