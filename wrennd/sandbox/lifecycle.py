"""The lifecycle: create, pause, resume, destroy, timeouts and background collapses.

Every operation holds the sandbox's lock and persists each transition before
it answers.  The steps themselves live in ``bringup`` (create, resume, clone),
``pausing`` and ``teardown``; this module orders them, decides the resting
state of each outcome, and runs what follows on its own (the VMM watcher, the
reaper's timeouts, chain collapses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from wrennd.log import kv
from wrennd.sandbox import (
    admission,
    bringup,
    diskpair,
    filling,
    hugepages,
    images,
    pausing,
    recovery,
    teardown,
    templates,
)
from wrennd.sandbox.environment import Deps, Progress, no_progress
from wrennd.sandbox.errors import PauseUndone, Refused, WrongState, lifted
from wrennd.sandbox.live import Live
from wrennd.sandbox.reaper import Reaper
from wrennd.sandbox.record import SandboxRecord, SandboxState, new_sandbox_id
from wrennd.sandbox.registry import Registry, Sandbox
from wrennd.sandbox.rwlock import PREEMPT_AFTER
from wrennd.sandbox.timing import TimingRecord, Timings

log = logging.getLogger(__name__)
S = SandboxState


class Lifecycle:
    def __init__(
        self, deps: Deps, registry: Registry, clock: Callable[[], float] = time.time
    ) -> None:
        self.deps = deps
        self.registry = registry
        self.clock = clock
        self.reaper = Reaper(self._expired, clock)

    # --- start and stop ------------------------------------------------------
    async def start(self) -> None:
        """Read every record, recover what a crash left, arm the timeouts."""
        cfg = self.deps.cfg
        for d in (cfg.sandboxes_dir, cfg.store, cfg.images_dir):
            d.mkdir(parents=True, exist_ok=True)
        records, adopted = await recovery.recover(self.deps)
        for rec in records:
            sb = Sandbox(rec, live=adopted.get(rec.id))
            self.registry.add(sb)
            self.reaper.set(rec.id, rec.expires_at if rec.state == S.RUNNING else None)
            if sb.live is not None:
                self._watch(sb, sb.live)
                filling.start(self.registry, sb, sb.live)  # a handed-over engine fills on
        self.reaper.start()

    async def close(self) -> None:
        """Stop the reaper and background work; running VMMs are left to ``pause_all``."""
        await self.reaper.stop()
        tasks = [sb.collapse for sb in self.registry if sb.collapse is not None]
        tasks += [sb.settling for sb in self.registry if sb.settling is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def pause_all(
        self, concurrency: int = 4, only: Callable[[Sandbox], bool] | None = None
    ) -> dict[str, str]:
        """Pause every running sandbox (or those ``only`` picks); sandbox id -> outcome."""
        gate = asyncio.Semaphore(concurrency)
        picked = [sb for sb in self.registry if only is None or only(sb)]
        running = [sb.id for sb in picked if sb.record.state == S.RUNNING]

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

    # --- create / destroy ------------------------------------------------------
    @lifted
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
        memory_backing: str | None = None,
    ) -> Sandbox:
        """A sandbox from an image (booted) or from a template (a clone of its snapshot);
        ``memory_backing`` "2m" backs its memory by 2 MiB huge pages (a clone: its
        template's)."""
        _check_timeout(timeout_s)
        image, vcpus, memory_mib, backing, source = await _machine(
            self.deps, self.registry, image, template, vcpus, memory_mib, memory_backing
        )
        now = self.clock()
        sb = Sandbox(
            _creating(image, template, vcpus, memory_mib, backing, timeout_s, env, metadata, now)
        )
        steps = 6 if template is None else 12
        t = Timings("create" if template is None else "clone", progress, steps=steps)
        async with sb.lock:
            self.registry.add(sb)  # before any await: a concurrent admission counts it
            try:
                await self.registry.save(sb)
                if template is not None:
                    sb.live = await bringup.clone(self.deps, sb.record, source, t)
                else:
                    sb.live = await bringup.create(self.deps, sb.record, source, t)
            except BaseException:
                t.failed(sb.id)
                self.registry.discard(sb.id)
                with contextlib.suppress(FileNotFoundError):  # the first save failed
                    await asyncio.shield(asyncio.to_thread(self.registry.records.remove, sb.id))
                raise
            await self._running(sb)
            sb.timings["create"] = await t.done(sb.id)
        log.info("sandbox created", extra=kv(sandbox=sb.id, image=image, template=template))
        return sb

    @lifted
    async def destroy(self, sandbox_id: str) -> TimingRecord:
        """Everything the sandbox holds goes; the stage timings of its going."""
        sb = self.registry.get(sandbox_id)
        async with sb.lock.exclusive(PREEMPT_AFTER):
            self.registry.still(sb)
            t = Timings("destroy", steps=4)
            await self.registry.move(sb, S.STOPPING, "destroy")
            self.reaper.set(sandbox_id, None)
            if sb.collapse is not None:
                await asyncio.gather(sb.collapse, return_exceptions=True)
            await sb.settled()
            try:
                await teardown.destroy(self.deps, sb.record, sb.live, t)
            except Exception as e:
                t.failed(sandbox_id)
                sb.live = None
                await self.registry.settle(sb, S.ERROR, f"destroy failed: {e}")
                raise
            self.registry.discard(sandbox_id)
            done = await t.done(sandbox_id)
        log.info("sandbox destroyed", extra=kv(sandbox=sandbox_id))
        return done

    # --- pause / resume ----------------------------------------------------------
    @lifted
    async def pause(self, sandbox_id: str, progress: Progress = no_progress) -> Sandbox:
        sb = self.registry.get(sandbox_id)
        async with sb.lock.exclusive(PREEMPT_AFTER):
            self.registry.still(sb)
            if sb.live is None:
                raise WrongState(sandbox_id, sb.record.state, "pause")
            t = Timings("pause", progress, steps=7)
            await self.registry.move(sb, S.PAUSING, "pause")
            try:
                header, after = await pausing.pause(self.deps, sb.record, sb.live, t)
                sb.settling = asyncio.ensure_future(after)
            except PauseUndone as e:
                t.failed(sb.id)
                await self._running(sb, str(e))
                raise
            except BaseException as e:
                t.failed(sb.id)
                # The VM could not be resumed, or releasing failed after the snapshot.
                await asyncio.shield(self._after_failed_pause(sb, e))
                raise
            sb.live = None
            sb.record.generation = header.generation
            sb.record.snapshot_build_id = str(header.build_id)
            sb.record.recovered_from = None
            await self._rest(sb, S.PAUSED)
            sb.timings["pause"] = await t.done(sb.id, generation=header.generation)
            if header.generation >= self.deps.cfg.max_generations:
                sb.collapse = asyncio.ensure_future(pausing.collapse(self.deps, self.registry, sb))
        return sb

    async def _after_failed_pause(self, sb: Sandbox, error: BaseException) -> None:
        if sb.live is not None:
            with contextlib.suppress(Exception):
                await sb.live.release(self.deps.storage, self.deps.network, self.deps.slots)
            sb.live = None
        await self._rest(sb, S.ERROR, f"pause failed: {error}")

    @lifted
    async def resume(
        self, sandbox_id: str, progress: Progress = no_progress, *, prefetch: bool = True
    ) -> Sandbox:
        """Back to running from the last snapshot; ``prefetch=False`` serves every page on
        demand (benchmarks compare the two)."""
        sb = self.registry.get(sandbox_id)
        async with sb.lock:
            self.registry.still(sb)
            if sb.record.state in (S.PAUSED, S.ERROR):
                rec = sb.record
                _admit(self.deps, self.registry, rec.memory_mib, rec.memory_backing, rec.id)
            await self.registry.move(sb, S.RESUMING, "resume")
            if sb.collapse is not None:
                # The engine maps the chain's files: let a collapse finish first.
                await asyncio.gather(sb.collapse, return_exceptions=True)
                sb.collapse = None
            await sb.settled()  # the prefetch map written, the disk kept, the network gone
            rec = sb.record
            t = Timings("resume", progress, steps=10)
            try:
                sb.live = await bringup.resume(self.deps, rec, t, prefetch)
            except BaseException as e:
                t.failed(sb.id)
                back = S.PAUSED if rec.generation is not None else S.ERROR
                error = f"resume failed: {e}"
                if back == S.PAUSED and rec.vmm_pid is not None:  # the VM may have run: disk too
                    await asyncio.shield(diskpair.roll_back_quietly(self.deps, rec, error))
                await asyncio.shield(self._rest(sb, back, error))
                raise
            if rec.timeout_s is not None:
                rec.expires_at = self.clock() + rec.timeout_s
            await self._running(sb)
            sb.timings["resume"] = await t.done(sb.id, **bringup.installed(sb.live))
        return sb

    @lifted
    async def set_timeout(self, sandbox_id: str, timeout_s: float | None) -> Sandbox:
        _check_timeout(timeout_s)
        sb = self.registry.get(sandbox_id)
        async with sb.lock.shared():  # the record only: guest calls may go on
            self.registry.still(sb)
            rec = sb.record
            if rec.state == S.DAMAGED:
                raise WrongState(sandbox_id, rec.state, "set a timeout")
            rec.timeout_s = timeout_s
            rec.expires_at = None if timeout_s is None else self.clock() + timeout_s
            await self.registry.save(sb)
            self.reaper.set(sandbox_id, rec.expires_at if rec.state == S.RUNNING else None)
        return sb

    # --- resting states ----------------------------------------------------------
    async def _rest(self, sb: Sandbox, target: SandboxState, error: str | None = None) -> None:
        """Persist a resting state other than running: no deadline, no watcher."""
        await self.registry.settle(sb, target, error)
        self.reaper.set(sb.id, None)

    async def _running(self, sb: Sandbox, error: str | None = None) -> None:
        """Persist running, arm the timeout and watch the VMM."""
        await self.registry.settle(sb, S.RUNNING, error)
        self.reaper.set(sb.id, sb.record.expires_at)
        if sb.live is not None:
            self._watch(sb, sb.live)
            filling.start(self.registry, sb, sb.live)
            await self.deps.handover.keep_while_served(self.deps.paths(sb.id).run, sb.live)

    async def _expired(self, sandbox_id: str) -> None:
        sb = self.registry.find(sandbox_id)
        if sb is None or sb.record.state != S.RUNNING:
            return
        if self.deps.cfg.ttl_action == "destroy":
            await self.destroy(sandbox_id)
        else:
            await self.pause(sandbox_id)

    def _watch(self, sb: Sandbox, live: Live) -> None:
        """A VMM that exits by itself puts its sandbox in error, resources released."""
        live.watcher = asyncio.ensure_future(_watch(self, sb, live))


async def _watch(life: Lifecycle, sb: Sandbox, live: Live) -> None:
    vmm = live.require_vmm()
    rc = await vmm.proc.wait()
    if live.stopping:
        return
    reason = str(vmm.proc.exited_error("the VMM exited while running"))
    log.error("sandbox vmm died", extra=kv(sandbox=sb.id, returncode=rc))
    async with sb.lock.exclusive(preempt_after=0):  # the guest is gone with its VMM
        if sb.live is not live:
            return
        live.watcher = None  # this task: release must not cancel it
        deps = life.deps
        await live.release(deps.storage, deps.network, deps.slots)
        sb.live = None
        await life._rest(sb, S.ERROR, reason)


def _creating(
    image: str | None,
    template: str | None,
    vcpus: int,
    memory_mib: int,
    memory_backing: str,
    timeout_s: float | None,
    env: dict[str, str] | None,
    metadata: dict[str, str] | None,
    now: float,
) -> SandboxRecord:
    """The record of a sandbox being created (its machine checked by ``_machine``)."""
    return SandboxRecord(
        id=new_sandbox_id(),
        state=S.CREATING,
        vcpus=vcpus,
        memory_mib=memory_mib,
        image=image,
        memory_backing=memory_backing,
        template=template,
        timeout_s=timeout_s,
        expires_at=None if timeout_s is None else now + timeout_s,
        env=dict(env or {}),
        metadata=dict(metadata or {}),
    )


def _check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not timeout_s > 0:
        raise Refused(f"timeout_s must be positive (or null for none), not {timeout_s}")


async def _machine(
    deps: Deps,
    registry: Registry,
    image: str | None,
    template: str | None,
    vcpus: int | None,
    memory_mib: int | None,
    memory_backing: str | None,
) -> tuple[str | None, int, int, str, Path]:
    """A create's image, vcpus, memory and backing (a clone: its template's), checked and
    admitted, and what it starts from: the template's directory or the image file."""
    if (image is None) == (template is None):
        raise ValueError("create takes exactly one of image and template")
    if template is not None:
        meta = await asyncio.to_thread(templates.load, deps, template)
        templates.check_clone(meta, vcpus, memory_mib, memory_backing)
        vcpus, memory_mib, image = meta.vcpus, meta.memory_mib, meta.image
        memory_backing = meta.memory_backing
        source = templates.template_dir(deps, template)
    else:
        assert image is not None
        source = images.path_of(deps.cfg.images_dir, image)
    memory_mib = memory_mib or 128
    backing = hugepages.check_backing(memory_mib, memory_backing or "4k")
    _admit(deps, registry, memory_mib, backing)
    return image, vcpus or 1, memory_mib, backing, source


def _admit(
    deps: Deps, registry: Registry, memory_mib: int, backing: str, own_id: str | None = None
) -> None:
    """Refused up front (before any VMM starts) when the host cannot hold the guest:
    in RAM, or for a 2 MiB-backed guest in the free pages of the huge page pool."""
    records = [sb.record for sb in registry if sb.id != own_id]
    if backing == "2m":
        hugepages.admit(memory_mib, hugepages.holders(records), hugepages.Pool.read())
    else:
        admission.admit(memory_mib, records, deps.cfg.memory_overcommit_percent)
