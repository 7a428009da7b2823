"""What the in-process benchmarks stand on: the guest image, a btrfs state dir in a
loop file (reflink layers), a test-bed network namespace playing the host (never
the machine's own network), fcsim, and the sandbox service driven in-process.

Imported as ``scratch`` by the scripts run as files (bench/ is then on sys.path)
and as ``bench.scratch`` by those run with ``python -m``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from wrennd.network.manager import NetworkManager
from wrennd.network.plan import Naming
from wrennd.sandbox.environment import HostConfig, VmmChoice
from wrennd.storage import loopdev
from wrennd.storage.aio import open_storage
from wrennd_sim.fcsim.control import ControlClient
from wrennd_sim.fcsim.harness import require_fcsim
from wrennd_sim.inproc import InProcess
from wrennd_sim.network_testbed import TestBed

REPO = Path(__file__).resolve().parents[1]


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def btrfs_dir(size_gib: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="wlb") as top, contextlib.ExitStack() as stack:
        image, mnt = Path(top) / "fs.img", Path(top) / "mnt"
        mnt.mkdir()
        with image.open("wb") as f:
            f.truncate(size_gib << 30)
        sh("mkfs.btrfs", "-q", "-f", image)
        device = loopdev.attach(image, read_only=False)
        stack.callback(loopdev.detach, device)
        sh("mount", "-t", "btrfs", device.path, mnt)
        stack.callback(sh, "umount", mnt)
        yield mnt


def guest_image() -> str:
    """The project's guest image (built once, cached under /var/cache/wrennd/images)."""
    return sh(REPO / "images" / "build-image", "-").strip().splitlines()[-1]


@contextlib.asynccontextmanager
async def scratch_manager(letter: str, **settings: Any) -> AsyncIterator[InProcess]:
    """The sandbox service on a scratch host; ``settings`` go to its HostConfig.

    ``letter`` names this benchmark's test bed, network prefix and nft table, so
    that two benchmarks (or a test run) on one machine do not meet."""
    image, tag, sim = guest_image(), secrets.token_hex(2), require_fcsim()
    bed = TestBed(f"{letter}b{tag}")
    with (
        btrfs_dir(8) as mnt,
        tempfile.TemporaryDirectory(prefix=f"w{letter}r", dir="/tmp") as run_dir,
    ):
        (mnt / "images").mkdir()
        sh("cp", "--sparse=always", image, mnt / "images" / "base.ext4")
        (mnt / "vmlinux").write_bytes(b"fcsim does not run the kernel")
        cfg = HostConfig(
            state_dir=mnt,
            run_dir=Path(run_dir),
            vmm=VmmChoice(sim, True, "benchmark on fcsim"),
            kernel=mnt / "vmlinux",
            host_netns=bed.host_path,
            **settings,
        )
        naming = Naming(prefix=f"{letter}b{tag}s", table=f"{letter}b_{tag}")
        network = NetworkManager(naming=naming, host_netns=bed.host_path)
        storage = await open_storage("reflink", mnt)
        try:
            bed.build()
            async with InProcess.started(cfg, storage, network) as mgr:
                yield mgr
        finally:
            bed.destroy()


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = await call()
    return time.perf_counter() - t, result


async def control(info: dict[str, Any], op: str, **args: Any) -> dict[str, Any]:
    """One call on a sandbox's fcsim control socket (touch, write, read, checksum...)."""
    ctl = ControlClient(Path(info["vmm"]["control_socket"]))
    try:
        return await ctl.call(op, **args)
    finally:
        await ctl.close()


def emit(result: Any, path: Path | None) -> None:
    """The result as JSON on stdout, and into ``path`` if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")
