"""Run fcsim the way the daemon runs a VMM (``wrennd.vm.vmm.Vmm``): for tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrennd.sandbox.environment import fcsim_binary
from wrennd.vm.client import FirecrackerClient
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles, VmmProcess
from wrennd.vm.vmm import Vmm
from wrennd_sim.fcsim.control import ControlClient


def require_fcsim() -> Path:
    """The installed ``fcsim`` script, found as the daemon finds it; an error if absent."""
    binary = fcsim_binary()
    if binary is None:
        raise FileNotFoundError("fcsim is not installed (make install)")
    return binary


@dataclass
class SimHandle:
    vmm: Vmm
    control: ControlClient

    @property
    def proc(self) -> VmmProcess:
        return self.vmm.proc

    @property
    def client(self) -> FirecrackerClient:
        return self.vmm.client

    async def close(self) -> None:
        await self.control.close()
        await self.vmm.close(grace=5)


async def launch(run_dir: Path, vm_id: str, netns: Path | None = None) -> SimHandle:
    files = VmmFiles.under(run_dir)
    args = FirecrackerArgs(require_fcsim(), vm_id, files, level="Debug")
    vmm = await Vmm.start(args.argv(), files, netns_path=netns, socket_timeout=20)
    return SimHandle(vmm, ControlClient(Path(f"{files.api_socket}.ctl")))
