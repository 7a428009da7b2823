"""What a pause leaves for after its answer, and the rule that nothing may overtake it.

Once the snapshot is ingested, the VMM gone and the layer detached, the sandbox
is paused: the answer does not wait for work that nothing needs before the next
operation on this sandbox.  That work runs in one background task per pause
(``Sandbox.settling``):

- the network namespace, links and NAT rules removed, then the slot freed
  (held until then, so no other sandbox can be given a half-removed slot);
- the next prefetch map learnt and written (atomic_write: fsynced, renamed,
  directory fsynced), then the snapshot opened into the cache of opened
  snapshots (sandbox/snapcache.py) for the next resume;
- the layer copied beside the snapshot (sandbox/diskpair.py).

Every later lifecycle step on the sandbox (resume, destroy, a template, a
chain collapse, the daemon's shutdown) first waits for that task
(``Sandbox.settled``), under the sandbox's lock, so it sees the map durable
and the disk kept, and never races the removal.  If the daemon dies before
the task ends, startup removes the stale network (recovery) and keeps the
disk of a paused sandbox that has none; the prefetch map is only a speed hint.
A step that fails is logged; a network that could not be removed keeps its
slot until the next start cleans it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from wrennd.log import kv
from wrennd.sandbox import diskpair
from wrennd.sandbox.environment import Deps
from wrennd.sandbox.live import Live
from wrennd.sandbox.prefetching import record_prefetch_map
from wrennd.sandbox.record import SandboxRecord
from wrennd.snapshot import Header
from wrennd.uffd.server import ServeResult

log = logging.getLogger(__name__)


async def _network(deps: Deps, live: Live) -> None:
    await live.remove_network(deps.network, deps.slots)


def _prefetch_and_open(
    deps: Deps, rec: SandboxRecord, result: ServeResult | None, header: Header, kind: str
) -> None:
    """The learnt prefetch map, durable; then the snapshot opened for the next resume."""
    snapshot_dir = deps.paths(rec.id).snapshot_dir
    if result is not None:
        record_prefetch_map(snapshot_dir, result, header, kind, deps.cfg.prefetch_max_bytes)
    deps.snapshots.open(snapshot_dir, deps.cfg.store)


async def settle(
    deps: Deps,
    rec: SandboxRecord,
    live: Live,
    result: ServeResult | None,
    header: Header,
    kind: str,
) -> None:
    """The background part of a pause (see the module doc); never raises."""
    began = time.monotonic()
    steps = {
        "network": _network(deps, live),
        "prefetch_map": asyncio.to_thread(_prefetch_and_open, deps, rec, result, header, kind),
        # The VMM is gone and the layer detached: this is the disk of this snapshot.
        "disk_keep": diskpair.keep(deps, rec, header.generation),
    }
    outcomes = await asyncio.gather(*steps.values(), return_exceptions=True)
    failed = {k: e for k, e in zip(steps, outcomes, strict=True) if isinstance(e, BaseException)}
    for step, error in failed.items():
        log.error("after a pause: step failed", extra=kv(sandbox=rec.id, step=step, error=error))
    log.info(
        "pause settled",
        extra=kv(sandbox=rec.id, ms=f"{(time.monotonic() - began) * 1e3:.2f}", failed=len(failed)),
    )
