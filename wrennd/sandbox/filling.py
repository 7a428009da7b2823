"""A resumed sandbox stops depending on the daemon: fill its memory, then detach.

With ``uffd_fill = "background"`` the UFFD engine installs every data page
after resume (at prefetch's low priority); once it is done the guest memory
is unregistered from the userfaultfd and the engine ends.  From then on the
VM needs nothing from this process: the record says so (``uffd_served``
false), so a daemon that dies later leaves it running and the next one
adopts it.  ``lazy`` serves pages on demand for the VM's whole run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from wrennd.log import kv
from wrennd.sandbox.live import Live
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.registry import Registry, Sandbox
from wrennd.uffd.detach import fill_bytes

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.2


def start(registry: Registry, sb: Sandbox, live: Live) -> None:
    """Fill and detach in the background when the engine serves this VM's memory."""
    if live.uffd is not None and live.filler is None:
        live.filler = asyncio.ensure_future(fill_and_detach(registry, sb, live))


async def fill_and_detach(registry: Registry, sb: Sandbox, live: Live) -> None:
    server = live.uffd
    if server is None or not server.detaching.fill:
        return
    while True:
        stats = server.stats()
        if stats is None or not stats.prefetch_running:
            break
        await asyncio.sleep(POLL_INTERVAL)
    if stats is None or stats.prefetch_error:
        log.warning("memory fill failed: served on demand", extra=kv(sandbox=sb.id, stats=stats))
        return
    # Shared: a pause (exclusive) either comes first and ends the engine, or waits.
    async with sb.lock.shared():
        if sb.live is not live or live.serving is None or live.serving.done():
            return
        server.detaching.request()
        server.stop()
        result = await asyncio.shield(live.serving)
        if result.reason != "detached":
            return
        sb.record.uffd_served = False
        await registry.save(sb)
    log.info(
        "memory filled, engine detached",
        extra=kv(sandbox=sb.id, pages=stats.copy_pages, faults=stats.faults),
    )


def engine_state(live: Live, rec: SandboxRecord) -> dict[str, Any] | None:
    """serving (lazy), filling with percent done, detaching, or detached.

    "detached" only once the record says the VM no longer needs this daemon: a
    daemon killed between the engine's detach and that save recovers the sandbox
    as one it served, so it was not yet safe to call it detached."""
    server = live.uffd
    if server is None:
        return None
    if server.detaching.done:
        return {"state": "detaching" if rec.uffd_served else "detached"}
    stats = server.stats()
    if not server.detaching.fill or stats is None:
        return {"state": "serving"}
    total = fill_bytes(server.detaching.ranges)
    page = server.regions[0].page_size if server.regions else 4096
    done = min(total, (stats.copy_pages + stats.zero_pages) * page)
    percent = 100.0 if total == 0 else round(100.0 * done / total, 1)
    return {"state": "filling" if stats.prefetch_running else "serving", "percent": percent}
