"""wrennd with two test methods and a shutdown hook, run as a real process by the tests.

test.sleep (read work) and test.lifecycle (lifecycle work) send a "started"
progress notification, sleep, and the lifecycle one writes a marker file in
$TEST_MARKER_DIR when it finishes and counts itself in a host.stats section.
The shutdown hook records which markers existed when it ran and the seconds
left before the deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from asyncio.subprocess import DEVNULL, PIPE
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


async def relay(ctx: CallContext, name: str, pipe: asyncio.StreamReader) -> None:
    while chunk := await pipe.read(4096):
        # As sandbox.exec streams: the bytes, base64.
        data = base64.b64encode(chunk).decode()
        await ctx.notify("stream", {"stream": name, "data": data})


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

    @d.methods.register(
        "test.exec",
        params={
            "type": "object",
            "properties": {"script": {"type": "string"}},
            "required": ["script"],
            "additionalProperties": False,
        },
    )
    async def run(ctx: CallContext, p: dict[str, Any]) -> dict[str, int]:
        # A real process, its output streamed; killed if the call is cancelled.
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", p["script"], stdout=PIPE, stderr=PIPE, stdin=DEVNULL
        )
        (MARKERS / "exec.pid").write_text(str(proc.pid))
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await asyncio.gather(
                relay(ctx, "stdout", proc.stdout), relay(ctx, "stderr", proc.stderr)
            )
            return {"exit_code": await proc.wait()}
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise

    async def hook(ctx: daemon.ShutdownContext) -> None:
        ctx.status("stopping: test hook")
        await asyncio.to_thread(record, ctx.remaining())

    d.on_shutdown("test hook", hook)


if __name__ == "__main__":
    sys.exit(daemon.main(sys.argv[1:], extend=extend))
