"""A sandbox manager on real components: fcsim, the project's image, a test-bed network.

The state directory is a btrfs filesystem in a loop file (so the storage
backend is reflink and a sandbox's layer costs nothing to make), the network
is built inside a test bed namespace playing the host (the machine's own links
and nftables are never touched), and the VMM is fcsim.  Teardown destroys
every sandbox, removes the namespaces, unmounts and detaches, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.sandbox.running_daemon import Daemon
from wrennd import mountinfo
from wrennd.network import nsutil
from wrennd.network.manager import NetworkManager
from wrennd.network.plan import Naming
from wrennd.sandbox.environment import HostConfig, VmmChoice
from wrennd.sdk import Sandbox
from wrennd.storage import loopdev
from wrennd.storage.aio import open_storage
from wrennd_sim.fcsim.harness import require_fcsim
from wrennd_sim.inproc import InProcess
from wrennd_sim.network_testbed import TestBed

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]


def run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


@pytest.fixture(scope="session")
def btrfs_root(tmp_path_factory: pytest.TempPathFactory, guest_image: Path) -> Iterator[Path]:
    """A btrfs mount holding images/base.ext4 (a reflink source for every sandbox)."""
    top = tmp_path_factory.mktemp("sbfs")
    image, mnt = top / "fs.img", top / "mnt"
    mnt.mkdir()
    with contextlib.ExitStack() as stack:
        with image.open("wb") as f:
            f.truncate(8 << 30)
        stack.callback(image.unlink)
        run("mkfs.btrfs", "-q", "-f", image)
        device = loopdev.attach(image, read_only=False)
        stack.callback(loopdev.detach, device)
        run("mount", "-t", "btrfs", device.path, mnt)
        stack.callback(run, "umount", mnt)
        base = mnt / "base.ext4"
        run("cp", "--sparse=always", guest_image, base)
        yield mnt


@dataclass
class Place:
    """A test's own state dir (on btrfs, with images/base.ext4 and a kernel file), run dir,
    test bed namespaces and network names."""

    bed: TestBed
    prefix: str
    table: str
    state_dir: Path
    run_dir: Path
    cgroups_before: set[str] = dataclasses.field(default_factory=set)

    @property
    def kernel(self) -> Path:
        return self.state_dir / "vmlinux"

    def leaks(self) -> list[str]:
        """Every sandbox resource of this test that still exists (for a no-leak check)."""
        found = [
            f"netns {n}"
            for n in nsutil.list_named()
            if n.startswith(self.bed.prefix) and n not in (self.bed.host, self.bed.outside)
        ]
        links = subprocess.run(
            ["ip", "-n", self.bed.host, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        found += [
            f"link {line.split(':')[1].strip()}"
            for line in links.splitlines()
            if line.split(":")[1].strip().startswith(self.bed.prefix)
        ]
        nft = subprocess.run(
            ["ip", "netns", "exec", self.bed.host, "nft", "list", "table", "inet", self.table],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found += [f"nft {line.strip()}" for line in nft.splitlines() if "elements" in line]
        found += [
            f"loop {b.device.path} -> {b.backing_file}"
            for b in loopdev.bound()
            # fcsim's guests bind their layer from inside their own mount namespace,
            # where the path is relative to the state filesystem's root.
            if str(self.state_dir) in b.backing_file or f"/{self.state_dir.name}/" in b.backing_file
        ]
        found += _processes_mentioning(self.run_dir)
        found += [f"cgroup {c}" for c in _dead_fcsim_cgroups() - self.cgroups_before]
        found += _mounts_under((self.state_dir, self.run_dir))
        return found


def _dead_fcsim_cgroups() -> set[str]:
    """fcsim's guest cgroups (``fcsim-guest-<fcsim pid>``) whose fcsim is gone."""
    root = Path("/sys/fs/cgroup")
    found = set()
    for cg in [*root.glob("fcsim-guest-*"), *root.glob("*/fcsim-guest-*")]:
        pid = cg.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            found.add(str(cg))
    return found


def _processes_mentioning(path: Path) -> list[str]:
    needle = os.fsencode(str(path))
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "cmdline").read_bytes():
                out.append(f"process {proc.name}")
    return out


def _mounts_under(paths: tuple[Path, ...]) -> list[str]:
    table = mountinfo.read()
    return [f"mount {m.target}" for p in paths for m in mountinfo.under(p, table)]


@dataclass
class Env(Place):
    manager: InProcess | None = None

    @property
    def mgr(self) -> InProcess:
        assert self.manager is not None
        return self.manager


@pytest.fixture
def manager(env: Env) -> InProcess:
    return env.mgr


@pytest.fixture
def place(btrfs_root: Path) -> Iterator[Place]:
    tag = secrets.token_hex(2)
    # Short: AF_UNIX paths (the VMM's sockets live under it) are limited to 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="wsb", dir="/tmp"))
    bed = TestBed(f"q{tag}")
    state_dir = btrfs_root / f"state-{tag}"
    (state_dir / "images").mkdir(parents=True)
    pl = Place(bed, f"q{tag}s", f"sbt_{tag}", state_dir, run_dir, _dead_fcsim_cgroups())
    try:
        run("cp", "--reflink=always", btrfs_root / "base.ext4", state_dir / "images/base.ext4")
        pl.kernel.write_bytes(b"fcsim does not run the kernel")
        bed.build()
        yield pl
    finally:
        for proc in _processes_mentioning(run_dir):  # a VMM a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.split()[1]), signal.SIGKILL)
        bed.destroy()
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not [n for n in nsutil.list_named() if n.startswith(bed.prefix)]


@pytest.fixture
def daemon(place: Place) -> Iterator[Daemon]:
    """A wrennd process on the place, not started yet; stopped with SIGTERM at the end."""
    d = Daemon(place)
    yield d
    if d.alive():
        d.stop(signal.SIGTERM)


@pytest.fixture
def daemon_env() -> dict[str, str]:
    """Settings (WRENND_*) the ``running`` daemon starts with; a test module may override it."""
    return {}


@pytest.fixture
def running(daemon: Daemon, daemon_env: dict[str, str]) -> Iterator[Daemon]:
    """A started wrennd; every sandbox left is destroyed through the SDK at the end."""
    daemon.start(**daemon_env)

    async def ready() -> None:
        await (await daemon.client()).close()

    asyncio.run(ready())
    yield daemon
    for sb in Sandbox.list(socket=daemon.socket):
        with Sandbox.connect(sb.id, socket=daemon.socket) as s:
            s.destroy()


@pytest.fixture
async def env(place: Place, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """The manager; ``parametrize("env", ["destroy"], indirect=True)`` sets ttl_action."""
    sim = require_fcsim()
    cfg = HostConfig(
        state_dir=place.state_dir,
        run_dir=place.run_dir,
        vmm=VmmChoice(sim, True, "tests run fcsim"),
        kernel=place.kernel,
        max_generations=4,
        boot_timeout=30,
        ttl_action=getattr(request, "param", "pause"),
        host_netns=place.bed.host_path,
    )
    network = NetworkManager(
        naming=Naming(prefix=place.prefix, table=place.table), host_netns=place.bed.host_path
    )
    storage = await open_storage("reflink", place.state_dir)
    async with InProcess.started(cfg, storage, network) as mgr:
        yield Env(**place.__dict__, manager=mgr)
