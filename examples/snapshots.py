"""asyncio: pause and resume a sandbox, then freeze it into a template and clone it twice.

WRENND_IMAGE=base python3 examples/snapshots.py
"""

import asyncio
import os
import time

from wrennd.sdk import AsyncSandbox, AsyncTemplate

IMAGE = os.environ.get("WRENND_IMAGE", "base")


async def main() -> None:
    async with await AsyncSandbox.create(IMAGE, memory_mib=128) as sb:
        await sb.files.write("/root/state.txt", "prepared once\n")
        start = time.monotonic()
        await sb.pause()
        print(f"paused {sb.id} in {time.monotonic() - start:.2f} s")
        start = time.monotonic()
        await sb.resume()
        print(
            f"resumed in {time.monotonic() - start:.2f} s:",
            (await sb.files.read("/root/state.txt")).decode().strip(),
        )
        template = await AsyncTemplate.create("example-snapshots", sb)
    try:
        clones = await asyncio.gather(*(template.spawn(memory_mib=128) for _ in range(2)))
        for clone in clones:
            async with clone:
                text = (await clone.exec("cat /root/state.txt")).text.strip()
                print(f"clone {clone.id} of {template.name}: {text}")
    finally:
        await template.delete()


asyncio.run(main())
