"""The sandbox manager: one lock per sandbox, every transition persisted before it is answered.

Operations: create, get, list, destroy, exec (buffered and streamed), files,
pause, resume, set_timeout, pause_all (shutdown).  The steps live in
``bringup`` (create, resume), ``pausing`` and ``teardown``; this module owns
the records, the locks, the reaper and the background collapses.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrennd.guest.client import ExecResult, GuestClient
from wrennd.guest.protocol import CommandSpec, Event
from wrennd.log import kv
from wrennd.network.manager import NetworkManager
from wrennd.network.slots import SlotAllocator
from wrennd.sandbox import bringup, images, pausing, teardown, templates
from wrennd.sandbox.context import Deps, Progress, no_progress
from wrennd.sandbox.errors import ImageNotFound, SandboxNotFound
from wrennd.sandbox.host import HostConfig
from wrennd.sandbox.live import Live
from wrennd.sandbox.reaper import Reaper
from wrennd.sandbox.record import RecordStore, SandboxRecord, new_sandbox_id
from wrennd.sandbox.recovery import recover
from wrennd.sandbox.state import SandboxState, WrongState, check_transition
from wrennd.sandbox.usage import usage
from wrennd.snapshot import ChainChangedError, collapse_in_background
from wrennd.storage.aio import AsyncStorage
from wrennd.storage.errors import StorageError

log = logging.getLogger(__name__)
S = SandboxState
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_clone(meta: templates.TemplateMeta, vcpus: int | None, memory_mib: int | None) -> None:
    """A template fixes the machine it was taken with: a clone cannot change it."""
    for what, asked, fixed in (
        ("vcpus", vcpus, meta.vcpus),
        ("memory_mib", memory_mib, meta.memory_mib),
    ):
        if asked is not None and asked != fixed:
            raise templates.TemplateMismatch(
                f"template {meta.name!r} was taken with {what}={fixed}; a clone cannot ask"
                f" for {what}={asked}"
            )


@dataclass
class Sandbox:
    record: SandboxRecord
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    live: Live | None = None
    collapse: asyncio.Task[None] | None = None


class SandboxManager:
    def __init__(self, cfg: HostConfig, storage: AsyncStorage, network: NetworkManager) -> None:
        self.cfg = cfg
        self.records = RecordStore(cfg.sandboxes_dir)
        self.deps = Deps(cfg, storage, network, SlotAllocator(network.plan.capacity), self.records)
        self._sandboxes: dict[str, Sandbox] = {}
        self.reaper = Reaper(self._expired)

    # --- start and stop ------------------------------------------------------
    async def start(self) -> None:
        """Read every record, recover what a crash left, arm the timeouts."""
        for d in (self.cfg.sandboxes_dir, self.cfg.store, self.cfg.images_dir):
            d.mkdir(parents=True, exist_ok=True)
        for rec in await recover(self.deps):
            self._sandboxes[rec.id] = Sandbox(rec)
            self.reaper.set(rec.id, rec.expires_at if rec.state == S.RUNNING else None)
        self.reaper.start()

    async def close(self) -> None:
        """Stop the reaper and background work; running VMMs are left to ``pause_all``."""
        await self.reaper.stop()
        tasks = [sb.collapse for sb in self._sandboxes.values() if sb.collapse is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def pause_all(self, concurrency: int = 4) -> dict[str, str]:
        """Pause every running sandbox (the shutdown hook); sandbox id -> outcome."""
        gate = asyncio.Semaphore(concurrency)
        running = [i for i, sb in self._sandboxes.items() if sb.record.state == S.RUNNING]

        async def one(sandbox_id: str) -> str:
            async with gate:
                try:
                    await self.pause(sandbox_id)
                except Exception as e:
                    log.error("pause at shutdown failed", extra=kv(sandbox=sandbox_id, error=e))
                    return f"error: {e}"
                return "paused"

        results = await asyncio.gather(*(one(i) for i in running))
        return dict(zip(running, results, strict=True))

    # --- lookups ---------------------------------------------------------------
    def _get(self, sandbox_id: str) -> Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:
            raise SandboxNotFound(sandbox_id)
        return sb

    def get(self, sandbox_id: str) -> dict[str, Any]:
        return self._describe(self._get(sandbox_id))

    async def usage(self, sandbox_id: str) -> dict[str, Any]:
        """Host disk (allocated blocks of the layer and the snapshot) and resident memory."""
        sb = self._get(sandbox_id)
        try:
            layer: Path | None = (await self.deps.storage.record(sandbox_id)).layer
        except StorageError:
            layer = None
        pid = sb.live.vmm.proc.pid if sb.live is not None and sb.live.vmm is not None else None
        return await asyncio.to_thread(usage, self.deps.paths(sandbox_id).state, layer, pid)

    def list(
        self, state: str | None = None, metadata: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for sb in self._sandboxes.values():
            rec = sb.record
            if state is not None and rec.state.value != state:
                continue
            if metadata and any(rec.metadata.get(k) != v for k, v in metadata.items()):
                continue
            out.append(self._describe(sb))
        return sorted(out, key=lambda d: (d["created_at"], d["id"]))

    def counts_by_state(self) -> dict[str, int]:
        counts = Counter(sb.record.state.value for sb in self._sandboxes.values())
        return {s.value: counts.get(s.value, 0) for s in SandboxState}

    def uffd_totals(self) -> dict[str, int]:
        """The UFFD engines of the running sandboxes, summed (host.stats)."""
        totals = Counter[str]()
        for sb in self._sandboxes.values():
            stats = sb.live.uffd.stats() if sb.live is not None and sb.live.uffd else None
            if stats is not None:
                totals["engines"] += 1
                totals["faults"] += stats.faults
                totals["pages_copied"] += stats.copy_pages
                totals["pages_zeroed"] += stats.zero_pages
                totals["pages_prefetched"] += stats.prefetch_pages
                totals["bytes_installed"] += stats.copy_bytes + stats.zero_bytes
        keys = ("engines", "faults", "pages_copied", "pages_zeroed", "pages_prefetched")
        return {k: totals[k] for k in (*keys, "bytes_installed")}

    def _describe(self, sb: Sandbox) -> dict[str, Any]:
        rec = sb.record
        paths = self.deps.paths(rec.id)
        d: dict[str, Any] = {
            "id": rec.id,
            "state": rec.state.value,
            "image": rec.image,
            "vcpus": rec.vcpus,
            "memory_mib": rec.memory_mib,
            "metadata": dict(rec.metadata),
            "timeout_s": rec.timeout_s,
            "expires_at": rec.expires_at,
            "generation": rec.generation,
            "error": rec.error,
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }
        live = sb.live
        if live is not None and live.net is not None and live.vmm is not None:
            d["host_address"] = str(live.net.host_address)
            d["vmm"] = {"pid": live.vmm.proc.pid, "api_socket": str(paths.vmm_files.api_socket)}
            if self.cfg.vmm.simulated:
                d["vmm"]["control_socket"] = str(paths.control_socket)
            stats = live.uffd.stats() if live.uffd is not None else None
            if stats is not None:
                d["faults"] = {
                    "faults": stats.faults,
                    "pages_copied": stats.copy_pages,
                    "pages_zeroed": stats.zero_pages,
                    "pages_prefetched": stats.prefetch_pages,
                    "fault_p50_ns": stats.latency_percentile_ns(0.5),
                    "fault_p99_ns": stats.latency_percentile_ns(0.99),
                    "fault_max_ns": stats.lat_max_ns,
                }
        return d

    # --- persistence -----------------------------------------------------------
    async def _move(self, sb: Sandbox, target: SandboxState, operation: str) -> None:
        rec = sb.record
        check_transition(rec.id, rec.state, target, operation)
        rec.state = target
        await asyncio.to_thread(self.records.save, rec)

    async def _settle(self, sb: Sandbox, target: SandboxState, error: str | None) -> None:
        """Persist a resting state reached after an operation (no transition check: the
        operation's own outcome decides it)."""
        rec = sb.record
        rec.state, rec.error = target, error
        live = sb.live
        rec.slot = live.slot if live is not None else None
        rec.vmm_pid = live.vmm.proc.pid if live is not None and live.vmm is not None else None
        await asyncio.to_thread(self.records.save, rec)
        running = target == S.RUNNING
        self.reaper.set(rec.id, rec.expires_at if running else None)
        if running and live is not None:
            self._watch(sb, live)

    # --- create / destroy --------------------------------------------------------
    async def create(
        self,
        image: str | None = None,
        *,
        template: str | None = None,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        progress: Progress = no_progress,
    ) -> dict[str, Any]:
        """A sandbox from an image (booted) or from a template (a clone of its snapshot)."""
        if (image is None) == (template is None):
            raise ValueError("create takes exactly one of image and template")
        meta = None
        if template is not None:
            meta = await asyncio.to_thread(templates.load, self.deps, template)
            _check_clone(meta, vcpus, memory_mib)
            vcpus, memory_mib, image = meta.vcpus, meta.memory_mib, meta.image
        else:
            assert image is not None
            path = self._image(image)
        rec = SandboxRecord(
            id=new_sandbox_id(),
            state=S.CREATING,
            vcpus=vcpus or 1,
            memory_mib=memory_mib or 128,
            image=image,
            template=template,
            timeout_s=timeout_s,
            expires_at=None if timeout_s is None else time.time() + timeout_s,
            env=dict(env or {}),
            metadata=dict(metadata or {}),
        )
        sb = Sandbox(rec)
        async with sb.lock:
            await asyncio.to_thread(self.records.save, rec)
            self._sandboxes[rec.id] = sb
            try:
                if template is not None:
                    tdir = templates.template_dir(self.deps, template)
                    sb.live = await bringup.clone(self.deps, rec, tdir, progress)
                else:
                    sb.live = await bringup.create(self.deps, rec, path, progress)
            except BaseException:
                del self._sandboxes[rec.id]
                await asyncio.shield(asyncio.to_thread(self.records.remove, rec.id))
                raise
            await self._settle(sb, S.RUNNING, None)
        log.info("sandbox created", extra=kv(sandbox=rec.id, image=image, template=template))
        return self._describe(sb)

    def _image(self, image: str) -> Path:
        if not _IMAGE_RE.match(image):
            raise ImageNotFound(image, "a name of letters, digits, _.-")
        path = self.cfg.image_path(image)
        if not path.is_file():
            raise ImageNotFound(image, str(path))
        return path

    # --- images -------------------------------------------------------------------
    def _image_users(self, name: str) -> builtins.list[str]:
        return sorted(
            i
            for i, sb in self._sandboxes.items()
            if sb.record.image == name and sb.record.template is None
        )

    async def register_image(self, name: str, source: Path) -> dict[str, Any]:
        made = await asyncio.to_thread(images.register, self.cfg.images_dir, name, source)
        log.info("image registered", extra=kv(image=name, source=source))
        return made.to_json([])

    async def list_images(self) -> builtins.list[dict[str, Any]]:
        found = await asyncio.to_thread(images.list_all, self.cfg.images_dir)
        return [i.to_json(self._image_users(i.name)) for i in found]

    async def delete_image(self, name: str) -> None:
        """Refused while a sandbox was made from it (the storage backend checks too)."""
        found = await asyncio.to_thread(images.info, self.cfg.images_dir, name)
        users = self._image_users(name)
        if users:
            raise images.ImageInUse(name, users)
        await self.deps.storage.delete_base(Path(found.path))
        log.info("image deleted", extra=kv(image=name))

    # --- templates ----------------------------------------------------------------
    async def create_template(
        self, sandbox_id: str, name: str, progress: Progress = no_progress
    ) -> dict[str, Any]:
        """Freeze a running or paused sandbox under ``name``; a running one is paused for
        it and resumed afterwards."""
        templates.check_name(name)
        sb = self._get(sandbox_id)
        was_running = sb.record.state == S.RUNNING
        if was_running:
            await self.pause(sandbox_id, progress)
        try:
            async with sb.lock:
                rec = sb.record
                if rec.state != S.PAUSED:
                    raise WrongState(sandbox_id, rec.state, "create a template")
                meta = templates.new_meta(name, rec.vcpus, rec.memory_mib, rec.image, rec.id)
                await templates.build(self.deps, sandbox_id, meta, progress)
        finally:
            if was_running:
                await self.resume(sandbox_id)
        return templates.describe(meta, [])

    def _template_users(self, name: str) -> builtins.list[str]:
        return sorted(i for i, sb in self._sandboxes.items() if sb.record.template == name)

    async def get_template(self, name: str) -> dict[str, Any]:
        meta = await asyncio.to_thread(templates.load, self.deps, name)
        return templates.describe(meta, self._template_users(name))

    async def list_templates(self) -> builtins.list[dict[str, Any]]:
        metas = await asyncio.to_thread(templates.list_all, self.deps)
        return [templates.describe(m, self._template_users(m.name)) for m in metas]

    async def delete_template(self, name: str) -> None:
        """Refused while any sandbox was made from it (TemplateInUse names them)."""
        await asyncio.to_thread(templates.delete, self.deps, name, self._template_users(name))

    async def destroy(self, sandbox_id: str) -> None:
        sb = self._get(sandbox_id)
        async with sb.lock:
            await self._move(sb, S.STOPPING, "destroy")
            self.reaper.set(sandbox_id, None)
            if sb.collapse is not None:
                await asyncio.gather(sb.collapse, return_exceptions=True)
            try:
                await teardown.destroy(self.deps, sb.record, sb.live)
            except Exception as e:
                sb.live = None
                await self._settle(sb, S.ERROR, f"destroy failed: {e}")
                raise
            del self._sandboxes[sandbox_id]
        log.info("sandbox destroyed", extra=kv(sandbox=sandbox_id))

    # --- pause / resume ------------------------------------------------------------
    async def pause(self, sandbox_id: str, progress: Progress = no_progress) -> dict[str, Any]:
        sb = self._get(sandbox_id)
        async with sb.lock:
            if sb.live is None:
                raise WrongState(sandbox_id, sb.record.state, "pause")
            await self._move(sb, S.PAUSING, "pause")
            try:
                header = await pausing.pause(self.deps, sb.record, sb.live, progress)
            except pausing.PauseUndone as e:
                await self._settle(sb, S.RUNNING, str(e))
                raise
            except BaseException as e:
                # The VM could not be resumed, or releasing failed after the snapshot.
                await asyncio.shield(self._after_failed_pause(sb, e))
                raise
            sb.live = None
            sb.record.generation = header.generation
            sb.record.snapshot_build_id = str(header.build_id)
            await self._settle(sb, S.PAUSED, None)
            if header.generation >= self.cfg.max_generations:
                sb.collapse = asyncio.ensure_future(self._collapse(sandbox_id))
        return self._describe(sb)

    async def _after_failed_pause(self, sb: Sandbox, error: BaseException) -> None:
        if sb.live is not None:
            with contextlib.suppress(Exception):
                await sb.live.release(self.deps.storage, self.deps.network, self.deps.slots)
            sb.live = None
        await self._settle(sb, S.ERROR, f"pause failed: {error}")

    async def _collapse(self, sandbox_id: str) -> None:
        snapshot_dir = self.deps.paths(sandbox_id).snapshot_dir
        try:
            header = await collapse_in_background(snapshot_dir, self.cfg.store)
        except ChainChangedError:
            log.info("collapse superseded by a newer snapshot", extra=kv(sandbox=sandbox_id))
        except Exception as e:
            log.error("background collapse failed", extra=kv(sandbox=sandbox_id, error=e))
        else:
            log.info("chain collapsed", extra=kv(sandbox=sandbox_id, build_id=header.build_id))
            sb = self._sandboxes.get(sandbox_id)
            if sb is not None:
                sb.record.snapshot_build_id = str(header.build_id)
                await asyncio.to_thread(self.records.save, sb.record)

    async def resume(
        self, sandbox_id: str, progress: Progress = no_progress, *, prefetch: bool = True
    ) -> dict[str, Any]:
        """Back to running from the last snapshot; ``prefetch=False`` serves every page on
        demand (benchmarks compare the two)."""
        sb = self._get(sandbox_id)
        async with sb.lock:
            await self._move(sb, S.RESUMING, "resume")
            if sb.collapse is not None:
                # The engine maps the chain's files: let a collapse finish first.
                await asyncio.gather(sb.collapse, return_exceptions=True)
                sb.collapse = None
            rec = sb.record
            try:
                sb.live = await bringup.resume(self.deps, rec, progress, prefetch)
            except BaseException as e:
                back = S.PAUSED if rec.generation is not None else S.ERROR
                await asyncio.shield(self._settle(sb, back, f"resume failed: {e}"))
                raise
            if rec.timeout_s is not None:
                rec.expires_at = time.time() + rec.timeout_s
            await self._settle(sb, S.RUNNING, None)
        return self._describe(sb)

    async def set_timeout(self, sandbox_id: str, timeout_s: float | None) -> dict[str, Any]:
        sb = self._get(sandbox_id)
        async with sb.lock:
            rec = sb.record
            rec.timeout_s = timeout_s
            rec.expires_at = None if timeout_s is None else time.time() + timeout_s
            await asyncio.to_thread(self.records.save, rec)
            self.reaper.set(sandbox_id, rec.expires_at if rec.state == S.RUNNING else None)
        return self._describe(sb)

    async def _expired(self, sandbox_id: str) -> None:
        sb = self._sandboxes.get(sandbox_id)
        if sb is None or sb.record.state != S.RUNNING:
            return
        if self.cfg.ttl_action == "destroy":
            await self.destroy(sandbox_id)
        else:
            await self.pause(sandbox_id)

    # --- the running VM ---------------------------------------------------------
    def _watch(self, sb: Sandbox, live: Live) -> None:
        vmm = live.require_vmm()

        async def watch() -> None:
            rc = await vmm.proc.wait()
            if live.stopping:
                return
            reason = str(vmm.proc.exited_error("the VMM exited while running"))
            log.error("sandbox vmm died", extra=kv(sandbox=sb.record.id, returncode=rc))
            async with sb.lock:
                if sb.live is not live:
                    return
                live.watcher = None  # this task: release must not cancel it
                await live.release(self.deps.storage, self.deps.network, self.deps.slots)
                sb.live = None
                await self._settle(sb, S.ERROR, reason)

        live.watcher = asyncio.ensure_future(watch())

    def guest(self, sandbox_id: str) -> GuestClient:
        """The agent of a running sandbox (WrongState otherwise)."""
        sb = self._get(sandbox_id)
        if sb.record.state != S.RUNNING or sb.live is None:
            raise WrongState(sandbox_id, sb.record.state, "reach the guest")
        return sb.live.require_guest()

    async def exec(self, sandbox_id: str, spec: CommandSpec) -> ExecResult:
        return await self.guest(sandbox_id).run(spec)

    def exec_stream(self, sandbox_id: str, spec: CommandSpec) -> AsyncIterator[Event]:
        return self.guest(sandbox_id).exec(spec)
