"""Run fcsim under the daemon's own launcher and client: for tests and benchmarks."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from wrennd.fcsim.control import ControlClient
from wrennd.vm.client import FirecrackerClient
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles, VmmProcess


def fcsim_binary() -> Path:
    """The installed ``fcsim`` script (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "fcsim"
    if beside.exists():
        return beside
    found = shutil.which("fcsim")
    if found is None:
        raise FileNotFoundError("fcsim is not installed (make install)")
    return Path(found)


@dataclass
class SimHandle:
    proc: VmmProcess
    client: FirecrackerClient
    control: ControlClient

    async def close(self) -> None:
        await self.control.close()
        await self.client.close()
        await self.proc.stop(grace=5)


async def launch(run_dir: Path, vm_id: str, netns: Path | None = None) -> SimHandle:
    files = VmmFiles.under(run_dir)
    args = FirecrackerArgs(fcsim_binary(), vm_id, files, level="Debug")
    proc = await VmmProcess.start(args.argv(), files, netns_path=netns, socket_timeout=20)
    client = FirecrackerClient(files.api_socket)
    try:
        await client.detect_version()
    except BaseException:
        await client.close()
        await proc.stop(grace=1)
        raise
    return SimHandle(proc, client, ControlClient(Path(f"{files.api_socket}.ctl")))
