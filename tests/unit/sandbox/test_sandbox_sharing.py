"""The KSM policy's bookkeeping: which VMMs are counted, the scan rate, taking the knobs
over and giving them back (also after a crash), what host.info and host.stats say.

Processes are real: started through wrennd-merge-exec (mergeable, as the kernel's
/proc/PID/ksm_stat says) or directly. The knobs live in a directory standing in
for /sys/kernel/mm/ksm, so these tests never change the host's ksmd; the real
sysfs is driven by tests/integration/sandbox/test_sandbox_ksm.py. (A plain file
can be read half written while the daemon's thread writes it, which a sysfs
attribute cannot: the polls here use .get.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_for, wait_for_blocking
from wrennd import config, features
from wrennd.sandbox.sharing import KsmSettings, MemorySharing, RunningVmm, pages_to_scan
from wrennd.vm import ksm

needs_ksm = pytest.mark.skipif(not features.ksm().available, reason=features.ksm().reason)
HOST_KNOBS = {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20}


def fake_sysfs(root: Path, **values: int) -> Path:
    root.mkdir(exist_ok=True)
    for name, value in {**HOST_KNOBS, **values}.items():
        (root / name).write_text(f"{value}\n")
    return root


@pytest.fixture
def sleepers() -> Iterator[tuple[int, int]]:
    """(pid of a mergeable process, pid of a plain one), both real."""
    merged = subprocess.Popen(ksm.wrap(["/bin/sleep", "60"]))
    plain = subprocess.Popen(["/bin/sleep", "60"])

    def marked() -> bool:  # the child runs prctl some time after Popen returns
        return bool((ksm.process_stat(merged.pid) or {}).get("ksm_merge_any"))

    wait_for_blocking(marked, what="the wrapped process marked mergeable")
    yield merged.pid, plain.pid
    for p in (merged, plain):
        p.kill()
        p.wait()


def test_policy_and_rate() -> None:
    clones, every = KsmSettings("clones"), KsmSettings("all")
    assert clones.merges("tpl") and not clones.merges(None)
    assert every.merges(None) and not KsmSettings("off").merges("tpl")
    s = KsmSettings("clones", True, scan_period_s=20, max_pages_to_scan=4000)
    # Ten 256 MiB clones: 655360 pages in 20 s of 20 ms batches (1000 batches).
    assert pages_to_scan(s, [256] * 10) == 656
    assert pages_to_scan(s, []) == 100  # ksmd's own default is the floor
    assert pages_to_scan(s, [256] * 1000) == 4000  # the CPU ceiling


def test_config_keys() -> None:
    s = config.load(path=None, env={"WRENND_KSM": "clones", "WRENND_KSM_MANAGE": "true"})
    assert (s.ksm, s.ksm_manage, s.ksm_scan_period_s) == ("clones", True, 20)
    assert config.load(path=None, env={}).ksm == "off"
    with pytest.raises(config.ConfigError, match="off, clones or all"):
        config.load(path=None, env={"WRENND_KSM": "some"})
    example = config.load(path=Path(__file__).parents[3] / "examples" / "wrennd.toml", env={})
    assert (example.ksm, example.ksm_manage) == ("off", False), "the example keeps the default"


@needs_ksm
def test_wrapper_marks_only_the_wrapped(sleepers: tuple[int, int]) -> None:
    merged, plain = sleepers
    assert ksm.process_stat(merged)["ksm_merge_any"] is True  # type: ignore[index]
    assert ksm.process_stat(plain)["ksm_merge_any"] is False  # type: ignore[index]
    with pytest.raises(ValueError, match="absolute"):
        ksm.wrap(["sleep", "1"])


@needs_ksm
async def test_takes_knobs_over_and_gives_them_back(
    tmp_path: Path, sleepers: tuple[int, int]
) -> None:
    merged, plain = sleepers
    sysfs = fake_sysfs(tmp_path / "ksm")
    running = [RunningVmm("sb-000000000002", plain, 256)]
    sharing = MemorySharing(KsmSettings("clones", True, 20, 4000), tmp_path, sysfs)
    await sharing.start(lambda: list(running))
    await asyncio.to_thread(sharing.retune, running)  # what the background task runs
    assert ksm.read_knobs(sysfs) == HOST_KNOBS, "an unmergeable VMM is not a reason to run"
    assert not (tmp_path / "ksm.json").exists()

    running.append(RunningVmm("sb-000000000001", merged, 2560))
    sharing.spawned()
    await wait_for(lambda: ksm.read_knobs(sysfs).get("run") == 1, what="ksmd run at the spawn")
    assert ksm.read_knobs(sysfs) == {"run": 1, "pages_to_scan": 656, "sleep_millisecs": 20}
    assert json.loads((tmp_path / "ksm.json").read_text()) == HOST_KNOBS
    info = sharing.info()
    assert info["turned_on_by"] == "daemon" and info["saved_knobs"] == HOST_KNOBS
    stats = sharing.stats()
    assert [v["pid"] for v in stats["vmms"]] == [merged] and stats["mergeable_vmms"] == 1

    running.pop()  # the clone is gone: the host's own knobs again
    sharing.spawned()
    await wait_for(lambda: not (tmp_path / "ksm.json").exists(), what="knobs given back")
    assert ksm.read_knobs(sysfs) == HOST_KNOBS
    running.append(RunningVmm("sb-000000000001", merged, 2560))
    sharing.spawned()
    await wait_for(lambda: ksm.read_knobs(sysfs).get("run") == 1, what="taken over again")
    await sharing.close()
    assert ksm.read_knobs(sysfs) == HOST_KNOBS and not (tmp_path / "ksm.json").exists()


async def test_knobs_a_dead_daemon_left_are_given_back(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "ksm", run=1, pages_to_scan=5000)
    (tmp_path / "ksm.json").write_text(json.dumps(HOST_KNOBS))
    sharing = MemorySharing(KsmSettings("clones", manage=False), tmp_path, sysfs)
    await sharing.start(list)
    assert ksm.read_knobs(sysfs) == HOST_KNOBS and not (tmp_path / "ksm.json").exists()
    await sharing.close()


async def test_reports_without_managing(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "ksm", run=1, pages_shared=10, pages_sharing=90)
    for name, value in {"pages_unshared": 5, "pages_volatile": 5, "full_scans": 3}.items():
        (sysfs / name).write_text(f"{value}\n")
    sharing = MemorySharing(KsmSettings("all"), tmp_path, sysfs)
    await sharing.start(list)
    info = sharing.info()
    assert info["running"] and info["turned_on_by"] == "host" and not info["managed_by_daemon"]
    stats = sharing.stats()
    # No general_profit file (a kernel before 6.4): the kernel's formula, computed.
    assert stats["profit_bytes"] == 90 * ksm.PAGE_SIZE - 110 * ksm.RMAP_ITEM_BYTES
    assert (stats["pages_shared"], stats["pages_sharing"], stats["full_scans"]) == (10, 90, 3)
    await sharing.close()
    assert ksm.read_knobs(sysfs)["run"] == 1, "the host's ksmd is not the daemon's to stop"
    gone = MemorySharing(KsmSettings("all"), tmp_path, tmp_path / "absent")
    assert gone.stats() == {"available": False} and gone.info()["available"] is False
