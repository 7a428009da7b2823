"""What the sandbox manager needs from the host: paths, the VMM binary, limits.

The VMM is Firecracker when its binary is present and KVM can boot a
standard guest; otherwise the bundled simulator (fcsim), and the log says why.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from wrennd import config, features
from wrennd.log import kv

log = logging.getLogger(__name__)

DEFAULT_BOOT_TIMEOUT = 60.0


@dataclass(frozen=True)
class VmmChoice:
    binary: Path
    simulated: bool
    why: str


def fcsim_binary() -> Path | None:
    """The installed ``fcsim`` script (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "fcsim"
    if beside.exists():
        return beside
    found = shutil.which("fcsim")
    return None if found is None else Path(found)


def choose_vmm(firecracker_bin: Path) -> VmmChoice:
    """Firecracker if it can run guests here, else fcsim (blocking probes: call at start)."""
    binary = features.binary_version(firecracker_bin)
    kvm = features.kvm()
    if binary.present and not binary.reason and kvm.available:
        choice = VmmChoice(firecracker_bin, False, f"{binary.version} with usable KVM")
    else:
        missing = binary.reason or kvm.reason
        sim = fcsim_binary()
        if sim is None:
            raise FileNotFoundError(f"no usable VMM: {missing}; and fcsim is not installed")
        choice = VmmChoice(sim, True, f"fcsim because {missing}")
    log.info(
        "vmm chosen", extra=kv(binary=choice.binary, simulated=choice.simulated, why=choice.why)
    )
    return choice


@dataclass(frozen=True)
class HostConfig:
    """The manager's view of the settings, plus test hooks (``host_netns``)."""

    state_dir: Path
    run_dir: Path
    vmm: VmmChoice
    kernel: Path
    max_generations: int = 10
    uffd_batch_bytes: int = 64 * 1024
    prefetch_max_bytes: int = 0  # 0: the sandbox's memory size
    ttl_action: str = "pause"
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    # The namespace where host-reachable sandbox addresses are routed (None: ours).
    host_netns: Path | None = None

    @classmethod
    def from_settings(cls, settings: config.Settings, vmm: VmmChoice) -> HostConfig:
        return cls(
            state_dir=settings.state_dir,
            run_dir=settings.run_dir,
            vmm=vmm,
            kernel=settings.kernel_path,
            max_generations=settings.max_generations,
            uffd_batch_bytes=settings.uffd_batch_bytes,
            prefetch_max_bytes=settings.prefetch_max_bytes,
            ttl_action=settings.ttl_action,
            host_netns=settings.host_netns,
        )

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def store(self) -> Path:
        return self.state_dir / "memfiles"

    @property
    def sandboxes_dir(self) -> Path:
        return self.state_dir / "sandboxes"

    def image_path(self, name: str) -> Path:
        return self.images_dir / f"{name}.ext4"
