"""Memory sharing between VMMs through KSM: which VMMs start mergeable, ksmd's scan rate,
and what host.stats and host.info say about it (docs/operations.md, "Memory sharing").

``ksm = "clones"`` marks the VMMs of sandboxes cloned from a template (for as long as
they live, resumes included), ``"all"`` every VMM; the mark is made by starting the
VMM through ``wrennd-merge-exec`` (vm.ksm). The kernel cannot scope merging further:
ksmd merges identical pages across every mergeable area on the host.

With ``ksm_manage`` the daemon runs ksmd while mergeable VMMs exist and sizes
``pages_to_scan`` so one full scan of their memory takes about ``ksm_scan_period_s``.
The knobs it found are saved in run_dir/ksm.json before its first write and put back
when no mergeable VMM is left and when it closes; a daemon that finds that file (the
previous one died managing ksmd) restores from it rather than from the values it
sees.  Without ``ksm_manage`` it never writes a knob: ksmd runs only if the host's
admin runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrennd.durable import atomic_write_json
from wrennd.log import kv
from wrennd.vm import ksm

log = logging.getLogger(__name__)

SLEEP_MILLISECS = 20  # ksmd's default batch interval; the rate is set by pages_to_scan
MIN_PAGES_TO_SCAN = 100  # ksmd's default
RETUNE_INTERVAL = 5.0  # seconds: VMMs that exited are noticed this late
SAVED_FILE = "ksm.json"


@dataclass(frozen=True)
class KsmSettings:
    mode: str = "off"  # off | clones | all
    manage: bool = False
    scan_period_s: int = 20
    max_pages_to_scan: int = 4000

    def merges(self, template: str | None) -> bool:
        """Whether a sandbox's VMM starts mergeable (``template``: the one it was cloned
        from, None for a sandbox booted from an image)."""
        return self.mode == "all" or (self.mode == "clones" and template is not None)


@dataclass(frozen=True)
class RunningVmm:
    sandbox_id: str
    pid: int
    memory_mib: int


def pages_to_scan(settings: KsmSettings, memory_mib: Iterable[int]) -> int:
    """Pages per batch so that one scan of this much guest memory takes the period."""
    pages = sum(memory_mib) * ((1 << 20) // ksm.PAGE_SIZE)
    batches = settings.scan_period_s * 1000 / SLEEP_MILLISECS
    wanted = math.ceil(pages / batches)
    return max(MIN_PAGES_TO_SCAN, min(settings.max_pages_to_scan, wanted))


class MemorySharing:
    """The daemon's KSM policy; ``vmms`` lists the running VMMs (from the registry)."""

    def __init__(self, settings: KsmSettings, run_dir: Path, sysfs: Path = ksm.KSM_SYSFS):
        self.settings = settings
        self.saved_path = run_dir / SAVED_FILE
        self.sysfs = sysfs
        self._saved: dict[str, int] | None = None  # the knobs found, while we manage them
        self._vmms: Callable[[], list[RunningVmm]] = list
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ksmd: int | None = None

    @property
    def active(self) -> bool:
        return self.settings.mode != "off"

    def wrap(self, argv: list[str], template: str | None) -> list[str]:
        """The VMM's command line, through the merge wrapper when the policy says so."""
        return ksm.wrap(argv) if self.settings.merges(template) else argv

    def spawned(self) -> None:
        """A mergeable VMM started: size the scan rate now rather than at the next tick."""
        self._kick.set()

    # --- managing ksmd ------------------------------------------------------------
    async def start(self, vmms: Callable[[], list[RunningVmm]]) -> None:
        self._vmms = vmms
        if ksm.available(self.sysfs):
            self._ksmd = await asyncio.to_thread(ksm.find_ksmd)
        try:
            self._saved = json.loads(self.saved_path.read_text())
            log.warning("ksm: a previous daemon left ksmd managed", extra=kv(**self._saved))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:  # written atomically: not expected
            log.error("ksm: unreadable saved knobs ignored", extra=kv(error=e))
        if not (self.active and self.settings.manage):
            if self._saved is not None:  # and this one may not manage it: give it back
                await self._restore_logged()
            if self.active and ksm.read_value("run", self.sysfs) != 1:
                log.warning(
                    "ksm: VMMs start mergeable but ksmd does not run and ksm_manage is false:"
                    " nothing is merged until the host's admin runs it",
                    extra=kv(mode=self.settings.mode),
                )
            return
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                # The registry is read here, on the loop; sysfs is written in a thread.
                await asyncio.to_thread(self.retune, self._vmms())
            except Exception:  # the next tick tries again
                log.exception("ksm: setting the scan rate failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), RETUNE_INTERVAL)
            self._kick.clear()

    @staticmethod
    def mergeable(running: list[RunningVmm]) -> list[tuple[RunningVmm, dict[str, int | bool]]]:
        """The VMMs the kernel says are mergeable, with their /proc/PID/ksm_stat."""
        out = []
        for vmm in running:
            stat = ksm.process_stat(vmm.pid)
            if stat is not None and stat.get("ksm_merge_any"):
                out.append((vmm, stat))
        return out

    def retune(self, running: list[RunningVmm]) -> None:
        """Run ksmd at a rate for the mergeable VMMs (blocking: sysfs writes)."""
        vmms = [vmm for vmm, _ in self.mergeable(running)]
        if not vmms:
            # Nothing to merge: the host's own settings again (ksmd keeps merged pages).
            self._restore()
            return
        if self._saved is None:
            self._saved = ksm.read_knobs(self.sysfs)
            atomic_write_json(self.saved_path, self._saved)
        wanted = {
            "sleep_millisecs": SLEEP_MILLISECS,
            "pages_to_scan": pages_to_scan(self.settings, (v.memory_mib for v in vmms)),
            "run": 1,
        }
        current = ksm.read_knobs(self.sysfs)
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changed:
            ksm.write_knobs(changed, self.sysfs)
            if "run" in changed:  # said loudly: it changes the whole host
                log.warning("ksm: ksmd started by wrennd (ksm_manage = true)", extra=kv(**changed))
            log.info("ksm: scan rate set", extra=kv(vmms=len(vmms), **changed))

    def _restore(self) -> None:
        saved = self._saved
        if saved is None:
            return
        ksm.write_knobs(saved, self.sysfs)
        self.saved_path.unlink(missing_ok=True)
        self._saved = None
        log.info("ksm: knobs restored", extra=kv(**saved))

    async def close(self) -> None:
        """Stop managing ksmd: the knobs go back to what the daemon found."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._restore_logged()

    async def _restore_logged(self) -> None:
        try:
            await asyncio.to_thread(self._restore)
        except OSError as e:  # the rest of the shutdown goes on; ksm.json stays for the next
            log.error("ksm: the knobs could not be restored", extra=kv(error=e, saved=self._saved))

    # --- what the API reports -------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """host.info: the policy, whether ksmd runs and who turned it on."""
        available = ksm.available(self.sysfs)
        run = ksm.read_value("run", self.sysfs) if available else None
        saved = self._saved
        by = None
        if run == 1:
            by = "daemon" if saved is not None and saved.get("run") != 1 else "host"
        return {
            "mode": self.settings.mode,
            "manage": self.settings.manage,
            "available": available,
            "running": run == 1,
            "run": run,
            "turned_on_by": by,
            "managed_by_daemon": saved is not None,
            "saved_knobs": saved,
            "knobs": ksm.read_knobs(self.sysfs) if available else {},
        }

    def stats(self) -> dict[str, Any]:
        """host.stats: the host's KSM counters, ksmd's CPU and each mergeable VMM's share."""
        if not ksm.available(self.sysfs):
            return {"available": False}
        vmms = [
            {
                "sandbox": vmm.sandbox_id,
                "pid": vmm.pid,
                "merging_pages": stat.get("ksm_merging_pages", 0),
                "profit_bytes": stat.get("ksm_process_profit"),
            }
            for vmm, stat in self.mergeable(self._vmms())
        ]
        cpu = None if self._ksmd is None else ksm.cpu_seconds(self._ksmd)
        return {
            "available": True,
            "running": ksm.read_value("run", self.sysfs) == 1,
            **ksm.counters(self.sysfs),
            "ksmd_cpu_seconds": cpu,
            "mergeable_vmms": len(vmms),
            "merging_pages": sum(int(v["merging_pages"] or 0) for v in vmms),
            "vmms": vmms,
        }
