"""fcsim as a process under the launcher: signals, sockets, failed loads, early exit."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from wrennd.vm.api import MemBackend
from wrennd.vm.errors import FirecrackerError, VmmExited
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles
from wrennd.vm.vmm import Vmm
from wrennd_sim.fcsim.harness import require_fcsim


def vmm_args(tmp_path: Path, name: str = "vm") -> tuple[list[str], VmmFiles]:
    files = VmmFiles.under(tmp_path / name)
    return FirecrackerArgs(require_fcsim(), name, files).argv(), files


async def test_sigterm_stops_fcsim_and_removes_its_sockets(tmp_path: Path) -> None:
    argv, files = vmm_args(tmp_path)
    vmm = await Vmm.start(argv, files, socket_timeout=20)
    assert vmm.client.version == (1, 16, 1)
    control = files.run_dir / "api.sock.ctl"
    assert control.exists()
    assert await vmm.close(grace=10) == -signal.SIGTERM
    assert not files.api_socket.exists()
    assert not control.exists()
    assert "fcsim exiting" in files.log_file.read_text()


async def test_failed_load_kills_the_vmm(tmp_path: Path) -> None:
    argv, files = vmm_args(tmp_path)
    vmm = await Vmm.start(argv, files, socket_timeout=20)
    with pytest.raises(FirecrackerError, match="Cannot load snapshot"):
        await vmm.load_snapshot(
            str(tmp_path / "no.vmstate"),
            MemBackend("File", str(tmp_path / "no.mem")),
            track_dirty_pages=True,
        )
    assert not vmm.proc.running
    assert not files.api_socket.exists()


async def test_bad_command_line_is_an_early_exit(tmp_path: Path) -> None:
    argv, files = vmm_args(tmp_path)
    argv += ["--level", "Loud"]
    with pytest.raises(VmmExited) as err:
        await Vmm.start(argv, files, socket_timeout=20)
    assert err.value.returncode == 2
    assert any("--level Loud" in line for line in err.value.log_tail)


async def test_log_path_must_exist_like_firecracker(tmp_path: Path) -> None:
    argv, files = vmm_args(tmp_path)
    i = argv.index("--log-path")
    argv[i + 1] = str(tmp_path / "absent" / "log")
    with pytest.raises(VmmExited, match="No such file"):
        await Vmm.start(argv, files, socket_timeout=20)
