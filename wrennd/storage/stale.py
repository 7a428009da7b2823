"""Which device-mapper and loop devices a crash left behind (pure selection, no side effects).

Inputs are what the kernel reports (``dmsetup table`` and the bound loop
devices from sysfs) plus the sandboxes that are running now.  A device is
stale when it belongs to no running sandbox: a ``wrenn-*`` dm device of
another sandbox, a loop device backed by a file in state_dir that no kept
dm table uses.  Loop devices backed by anything outside state_dir are never
touched.  The devices that stay are adopted: base loops with their
reference counts, CoW loops with their sandbox.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from wrennd.storage.dmsetup import TableLine, sandbox_of
from wrennd.storage.loopdev import BoundLoop, LoopDevice

DELETED_SUFFIX = " (deleted)"


@dataclass
class StalePlan:
    remove_dm: list[str] = field(default_factory=list)  # in this order, before any loop
    detach_loops: list[LoopDevice] = field(default_factory=list)
    base_refs: list[tuple[Path, LoopDevice, int]] = field(default_factory=list)
    cow_loops: dict[str, LoopDevice] = field(default_factory=dict)  # sandbox id -> device


def backing_path(loop: BoundLoop) -> Path:
    return Path(loop.backing_file.removesuffix(DELETED_SUFFIX))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def plan_stale(
    tables: dict[str, list[TableLine]],
    loops: list[BoundLoop],
    running: set[str],
    state_dir: Path,
) -> StalePlan:
    plan = StalePlan()
    kept: dict[str, list[TableLine]] = {}
    for name, lines in sorted(tables.items()):
        sid = sandbox_of(name)
        if sid is None:
            continue  # not ours
        if sid in running:
            kept[sid] = lines
        else:
            plan.remove_dm.append(name)

    origin_refs: Counter[str] = Counter()
    cow_of: dict[str, str] = {}
    for sid, lines in kept.items():
        for line in lines:
            if line.target == "snapshot" and len(line.args) >= 2:
                origin_refs[line.args[0]] += 1
                cow_of[line.args[1]] = sid

    root = state_dir.resolve()
    for loop in loops:
        if not _under(backing_path(loop), root):
            continue
        devno = loop.device.devno
        if devno in cow_of:
            plan.cow_loops[cow_of[devno]] = loop.device
        elif origin_refs[devno]:
            plan.base_refs.append((backing_path(loop), loop.device, origin_refs[devno]))
        else:
            plan.detach_loops.append(loop.device)
    return plan
