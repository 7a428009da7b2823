"""wrennd with two test methods and a shutdown hook, run as a real process by the tests.

test.sleep (read work) and test.lifecycle (lifecycle work) send a "started"
progress notification, sleep, and the lifecycle one writes a marker file in
$TEST_MARKER_DIR when it finishes and counts itself in a host.stats section.
The shutdown hook records which markers existed when it ran and the seconds
left before the deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from wrennd import daemon
from wrennd.rpc.methods import CallContext, Kind

SLEEP = {
    "type": "object",
    "properties": {"seconds": {"type": "number"}, "tag": {"type": "string"}},
    "required": ["seconds"],
    "additionalProperties": False,
}
MARKERS = Path(os.environ["TEST_MARKER_DIR"])


def record(remaining: float) -> None:
    seen = sorted(p.name for p in MARKERS.iterdir())
    (MARKERS / "hook.json").write_text(json.dumps({"seen": seen, "remaining": remaining}))


def extend(d: daemon.Daemon) -> None:
    finished = {"lifecycle_finished": 0}
    d.stats.add("test", lambda: finished)
    d.info.add("test", lambda: {"extended": True})

    @d.methods.register("test.sleep", params=SLEEP)
    async def sleep_read(ctx: CallContext, p: dict[str, Any]) -> str:
        await ctx.progress(stage="started")
        await asyncio.sleep(p["seconds"])
        return "slept"

    @d.methods.register("test.lifecycle", params=SLEEP, kind=Kind.LIFECYCLE, mutating=True)
    async def lifecycle(ctx: CallContext, p: dict[str, Any]) -> str:
        await ctx.progress(stage="started")
        await asyncio.sleep(p["seconds"])
        marker = MARKERS / f"lifecycle-{p.get('tag', 'x')}"
        await asyncio.to_thread(marker.write_text, "done")
        finished["lifecycle_finished"] += 1
        return "done"

    async def hook(ctx: daemon.ShutdownContext) -> None:
        ctx.status("stopping: test hook")
        await asyncio.to_thread(record, ctx.remaining())

    d.on_shutdown("test hook", hook)


if __name__ == "__main__":
    sys.exit(daemon.main(sys.argv[1:], extend=extend))
