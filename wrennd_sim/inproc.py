"""The sandbox service driven in-process, with the API's result shapes.

Tests and benchmarks that do not need the socket call the service's lifecycle
and catalogs directly; results come back as the JSON objects the API returns
(wrennd.rpc.views), errors as the sandbox layer raises them.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from wrennd.guest.client import ExecResult, GuestClient
from wrennd.guest.protocol import CommandSpec
from wrennd.network.manager import NetworkManager
from wrennd.rpc import views
from wrennd.sandbox import SandboxService
from wrennd.sandbox.environment import HostConfig, Progress, no_progress
from wrennd.storage.aio import AsyncStorage


class InProcess:
    def __init__(self, service: SandboxService) -> None:
        self.service = service

    @classmethod
    @contextlib.asynccontextmanager
    async def started(
        cls, cfg: HostConfig, storage: AsyncStorage, network: NetworkManager
    ) -> AsyncIterator[InProcess]:
        """A started service; on the way out every sandbox is destroyed, background work
        and storage stopped, and the sandbox network removed, whatever failed."""
        api = cls(SandboxService(cfg, storage, network))
        try:
            await api.service.start()
            yield api
        finally:
            for sb in api.list():
                with contextlib.suppress(Exception):
                    await api.destroy(sb["id"])
            await api.service.close()
            with contextlib.suppress(Exception):
                await network.uninstall()

    # --- sandboxes -------------------------------------------------------------
    async def create(self, image: str | None = None, **kw: Any) -> dict[str, Any]:
        return views.sandbox(self.service, await self.service.lifecycle.create(image, **kw))

    async def pause(self, sandbox_id: str, progress: Progress = no_progress) -> dict[str, Any]:
        sb = await self.service.lifecycle.pause(sandbox_id, progress)
        return views.sandbox(self.service, sb)

    async def resume(
        self, sandbox_id: str, progress: Progress = no_progress, *, prefetch: bool = True
    ) -> dict[str, Any]:
        sb = await self.service.lifecycle.resume(sandbox_id, progress, prefetch=prefetch)
        return views.sandbox(self.service, sb)

    async def settled(self, sandbox_id: str) -> None:
        """Wait for the work a pause leaves for after its answer (network removal, prefetch
        map, kept disk: sandbox/afterpause.py), for callers that read those directly."""
        await self.service.registry.get(sandbox_id).settled()

    async def destroy(self, sandbox_id: str) -> dict[str, Any]:
        done = await self.service.lifecycle.destroy(sandbox_id)
        return {"id": sandbox_id, "destroyed": True, "timings": views.timings({"destroy": done})}

    async def set_timeout(self, sandbox_id: str, timeout_s: float | None) -> dict[str, Any]:
        sb = await self.service.lifecycle.set_timeout(sandbox_id, timeout_s)
        return views.sandbox(self.service, sb)

    def get(self, sandbox_id: str) -> dict[str, Any]:
        return views.sandbox(self.service, self.service.registry.get(sandbox_id))

    async def usage(self, sandbox_id: str) -> dict[str, Any]:
        return await self.service.usage(self.service.registry.get(sandbox_id))

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        return views.sandboxes(self.service, state)

    def guest(self, sandbox_id: str) -> GuestClient:
        """The running sandbox's agent client itself (its own errors, unlifted)."""
        return self.service.registry.running(sandbox_id, "reach the guest")[1].require_guest()

    async def exec(
        self, sandbox_id: str, spec: CommandSpec, within: float | None = None
    ) -> ExecResult:
        """Run a command as sandbox.exec does: shared lock, deadline (``within`` seconds,
        else the command's own timeout plus a grace, else the host's default)."""
        limit = self.service.command_deadline(spec) if within is None else within
        async with self.service.guest(sandbox_id, limit) as guest:
            return await guest.run(spec)

    # --- images and templates ----------------------------------------------------
    async def register_image(self, name: str, source: Path) -> dict[str, Any]:
        return views.image(await self.service.images.register(name, source), [])

    async def list_images(self) -> builtins.list[dict[str, Any]]:
        found = await self.service.images.all()
        return [views.image(i, self.service.images.users(i.name)) for i in found]

    async def delete_image(self, name: str) -> None:
        await self.service.images.delete(name)

    async def create_template(
        self,
        sandbox_id: str,
        name: str,
        progress: Progress = no_progress,
        memory_backing: str | None = None,
    ) -> dict[str, Any]:
        meta, made = await self.service.templates.create(sandbox_id, name, progress, memory_backing)
        return views.template(meta, [], made)

    async def get_template(self, name: str) -> dict[str, Any]:
        meta = await self.service.templates.get(name)
        return views.template(meta, self.service.templates.users(name))

    async def list_templates(self) -> builtins.list[dict[str, Any]]:
        metas = await self.service.templates.all()
        return [views.template(m, self.service.templates.users(m.name)) for m in metas]

    async def delete_template(self, name: str) -> None:
        await self.service.templates.delete(name)
