"""The host the sandboxes live on: settings, the chosen VMM, where files go, shared services.

``HostConfig`` is the lifecycle's view of the settings; ``SandboxPaths`` says
where one sandbox keeps its files (DESIGN.md section 3) and runtime sockets;
``Deps`` bundles what every lifecycle step uses.  The VMM is Firecracker when
its binary is present and KVM can boot a standard guest; otherwise the bundled
simulator (fcsim, found by its binary, never imported), and the log says why.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wrennd import config, features
from wrennd.log import kv
from wrennd.network.manager import NetworkManager
from wrennd.network.slots import SlotAllocator
from wrennd.sandbox.handover import HandOver
from wrennd.sandbox.jail import JailSettings
from wrennd.sandbox.record import RecordStore, check_sandbox_id
from wrennd.sandbox.sharing import KsmSettings, MemorySharing
from wrennd.sandbox.snapcache import OpenedSnapshots
from wrennd.storage.aio import AsyncStorage
from wrennd.vm.launcher import VmmFiles

log = logging.getLogger(__name__)

DEFAULT_BOOT_TIMEOUT = 60.0
DEFAULT_GUEST_TIMEOUT = 300.0


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
    verify_pages: bool = True
    scrub_interval: float = 0  # seconds between background scrubs; 0: off
    scrub_rate_bytes: int = 32 << 20
    ttl_action: str = "pause"
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    guest_timeout: float = DEFAULT_GUEST_TIMEOUT
    transfer_idle_timeout: float = 60.0  # seconds a file transfer may make no progress
    # The daemon's default is Settings.uffd_fill ("background"); a HostConfig built by
    # hand (tests and benchmarks that measure demand faults) serves lazily unless told.
    uffd_fill: str = "lazy"
    uffd_fill_rate_bytes: int = 0  # bytes/s the background install may take; 0: no limit
    uffd_handover: bool = True  # keep serving engines' uffds in systemd's fd store
    memory_overcommit_percent: int = 100
    # The namespace where host-reachable sandbox addresses are routed (None: ours).
    host_netns: Path | None = None
    # Every VMM under the jailer (use_jailer), else started directly.
    jail: JailSettings | None = None
    ksm: KsmSettings = field(default_factory=KsmSettings)

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
            verify_pages=settings.verify_pages,
            scrub_interval=settings.scrub_interval,
            scrub_rate_bytes=settings.scrub_rate_bytes,
            ttl_action=settings.ttl_action,
            guest_timeout=float(settings.guest_timeout),
            transfer_idle_timeout=float(settings.transfer_idle_timeout),
            uffd_fill=settings.uffd_fill,
            uffd_fill_rate_bytes=settings.uffd_fill_rate_bytes,
            uffd_handover=settings.uffd_handover,
            memory_overcommit_percent=settings.memory_overcommit_percent,
            host_netns=settings.host_netns,
            jail=jail_settings(settings, vmm),
            ksm=KsmSettings(
                settings.ksm,
                settings.ksm_manage,
                settings.ksm_scan_period_s,
                settings.ksm_max_pages_to_scan,
            ),
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


def jail_settings(settings: config.Settings, vmm: VmmChoice) -> JailSettings | None:
    """The jail of every VMM, or None without use_jailer. fcsim is jailed as
    ``fcsim-firecracker`` (the jailer runs only a file named *firecracker*)."""
    if not settings.use_jailer:
        return None
    if settings.jailer_bin is None:
        raise ValueError("use_jailer = true needs jailer_bin")
    exec_file = vmm.binary.parent / "fcsim-firecracker" if vmm.simulated else vmm.binary
    return JailSettings(
        jailer_bin=settings.jailer_bin,
        exec_file=exec_file,
        uid=settings.jail_uid,
        gid=settings.jail_gid,
        chroot_base=settings.jail_chroot_base or settings.state_dir / "jail",
        parent_cgroup=settings.jail_cgroup,
    )


@dataclass(frozen=True)
class SandboxPaths:
    state: Path  # state_dir/sandboxes/<id>
    run: Path  # run_dir/sandboxes/<id>
    jail_root: Path | None = None  # the VMM's chroot when it runs under the jailer

    @classmethod
    def of(
        cls, state_dir: Path, run_dir: Path, sandbox_id: str, jail: JailSettings | None = None
    ) -> SandboxPaths:
        check_sandbox_id(sandbox_id)
        return cls(
            state_dir / "sandboxes" / sandbox_id,
            run_dir / "sandboxes" / sandbox_id,
            None if jail is None else jail.root_of(sandbox_id),
        )

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
        if self.jail_root is not None:
            return VmmFiles.under(self.jail_root / "run")
        return VmmFiles.under(self.run / "vmm")

    @property
    def uffd_socket(self) -> Path:
        """The UFFD server's socket: inside the chroot for a jailed VMM."""
        if self.jail_root is not None:
            return self.jail_root / "run" / "uffd.sock"
        return self.run / "uffd.sock"

    @property
    def control_socket(self) -> Path:
        """fcsim's control socket (only fcsim has one)."""
        return Path(f"{self.vmm_files.api_socket}.ctl")


class Progress(Protocol):
    """``progress(stage, done, total, **facts)``: long work reports how far it got (steps),
    with facts such as bytes ingested or pages prefetched."""

    def __call__(self, stage: str, done: int, total: int, **facts: int) -> Awaitable[None]: ...


async def no_progress(stage: str, done: int, total: int, **facts: int) -> None:
    return None


@dataclass
class Deps:
    cfg: HostConfig
    storage: AsyncStorage
    network: NetworkManager
    slots: SlotAllocator
    records: RecordStore
    handover: HandOver = field(default_factory=HandOver)
    # Snapshots opened since their pause, for the next resume (sandbox/snapcache.py).
    snapshots: OpenedSnapshots = field(default_factory=OpenedSnapshots)
    _network_started: bool = False
    _network_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sharing: MemorySharing = field(init=False)

    def __post_init__(self) -> None:
        self.sharing = MemorySharing(self.cfg.ksm, self.cfg.run_dir)

    async def network_ready(self) -> NetworkManager:
        """The network manager, started on first use: a daemon that never runs a
        sandbox never touches the host's nftables or sysctls."""
        async with self._network_lock:
            if not self._network_started:
                await self.network.start()
                self._network_started = True
        return self.network

    def paths(self, sandbox_id: str) -> SandboxPaths:
        return SandboxPaths.of(self.cfg.state_dir, self.cfg.run_dir, sandbox_id, self.cfg.jail)
