"""The named things sandboxes are made from: base images and templates.

``images`` and ``templates`` hold the blocking file work; the catalogs run it
off the event loop, check who depends on what (a delete is refused while a
sandbox was made from the image or template), and for a template, pause the
source sandbox around the build.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from wrennd.log import kv
from wrennd.sandbox import images, templates
from wrennd.sandbox.environment import Deps, Progress, no_progress
from wrennd.sandbox.errors import ImageInUse, WrongState, lifted
from wrennd.sandbox.lifecycle import Lifecycle
from wrennd.sandbox.record import SandboxState
from wrennd.sandbox.registry import Registry
from wrennd.sandbox.rwlock import PREEMPT_AFTER
from wrennd.sandbox.timing import TimingRecord, Timings

log = logging.getLogger(__name__)


class ImageCatalog:
    def __init__(self, deps: Deps, registry: Registry) -> None:
        self.deps = deps
        self.registry = registry
        self.images_dir = deps.cfg.images_dir

    @lifted
    async def register(self, name: str, source: Path) -> images.ImageInfo:
        made = await asyncio.to_thread(images.register, self.images_dir, name, source)
        log.info("image registered", extra=kv(image=name, source=source))
        return made

    @lifted
    async def all(self) -> list[images.ImageInfo]:
        return await asyncio.to_thread(images.list_all, self.images_dir)

    def users(self, name: str) -> list[str]:
        return self.registry.users_of_image(name)

    @lifted
    async def delete(self, name: str) -> None:
        """Refused while a sandbox was made from it (the storage backend checks too)."""
        found = await asyncio.to_thread(images.info, self.images_dir, name)
        users = self.users(name)
        if users:
            raise ImageInUse(name, users)
        await self.deps.storage.delete_base(Path(found.path))
        log.info("image deleted", extra=kv(image=name))


class TemplateCatalog:
    def __init__(self, deps: Deps, registry: Registry, lifecycle: Lifecycle) -> None:
        self.deps = deps
        self.registry = registry
        self.lifecycle = lifecycle

    @lifted
    async def create(
        self,
        sandbox_id: str,
        name: str,
        progress: Progress = no_progress,
        memory_backing: str | None = None,
    ) -> tuple[templates.TemplateMeta, TimingRecord]:
        """Freeze a running or paused sandbox under ``name``; a running one is paused for
        it and resumed afterwards.  A template keeps the sandbox's page size:
        ``memory_backing``, if given, must be it.  The timings are the build's (under the
        sandbox's lock); the pause and resume around it keep their own in the sandbox's."""
        templates.check_name(name)
        sb = self.registry.get(sandbox_id)
        templates.check_backing(sb.record, memory_backing)
        was_running = sb.record.state == SandboxState.RUNNING
        if was_running:
            await self.lifecycle.pause(sandbox_id, progress)
        try:
            async with sb.lock.exclusive(PREEMPT_AFTER):
                rec = sb.record
                if rec.state != SandboxState.PAUSED:
                    raise WrongState(sandbox_id, rec.state, "create a template")
                await sb.settled()  # the snapshot's prefetch map is copied too
                meta = templates.new_meta(
                    name, rec.vcpus, rec.memory_mib, rec.image, rec.id, rec.memory_backing
                )
                t = Timings("template_create", progress, steps=3)
                try:
                    await templates.build(self.deps, sandbox_id, meta, t)
                except BaseException:
                    t.failed(sandbox_id)
                    raise
                sb.timings["template_create"] = done = await t.done(sandbox_id)
        finally:
            if was_running:
                await self.lifecycle.resume(sandbox_id)
        return meta, done

    def users(self, name: str) -> list[str]:
        return self.registry.users_of_template(name)

    @lifted
    async def get(self, name: str) -> templates.TemplateMeta:
        return await asyncio.to_thread(templates.load, self.deps, name)

    @lifted
    async def all(self) -> list[templates.TemplateMeta]:
        return await asyncio.to_thread(templates.list_all, self.deps)

    @lifted
    async def delete(self, name: str) -> None:
        """Refused while any sandbox was made from it (TemplateInUse names them)."""
        await asyncio.to_thread(templates.delete, self.deps, name, self.users(name))
