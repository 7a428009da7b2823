"""Where one sandbox keeps its files (DESIGN.md §3) and its runtime sockets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrennd.sandbox.record import check_sandbox_id
from wrennd.vm.launcher import VmmFiles


@dataclass(frozen=True)
class SandboxPaths:
    state: Path  # state_dir/sandboxes/<id>
    run: Path  # run_dir/sandboxes/<id>

    @classmethod
    def of(cls, state_dir: Path, run_dir: Path, sandbox_id: str) -> SandboxPaths:
        check_sandbox_id(sandbox_id)
        return cls(state_dir / "sandboxes" / sandbox_id, run_dir / "sandboxes" / sandbox_id)

    @property
    def snapshot_dir(self) -> Path:
        return self.state / "snapshot"

    @property
    def vmstate(self) -> Path:
        """The VMM state of the last pause (beside the memory header it goes with)."""
        return self.snapshot_dir / "vmstate"

    @property
    def pending_vmstate(self) -> Path:
        """Where a pause writes the VMM state before the memory is ingested."""
        return self.state / "vmstate.pending"

    @property
    def pending_memfile(self) -> Path:
        """A pause's memory file: fresh each time, on the generation store's filesystem."""
        return self.state / "memfile.pending"

    @property
    def vmm_files(self) -> VmmFiles:
        return VmmFiles.under(self.run / "vmm")

    @property
    def uffd_socket(self) -> Path:
        return self.run / "uffd.sock"

    @property
    def control_socket(self) -> Path:
        """fcsim's control socket (only fcsim has one)."""
        return Path(f"{self.vmm_files.api_socket}.ctl")
