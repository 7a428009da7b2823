"""device-mapper through dmsetup: table strings, command lines and output parsing.

The command runner is a parameter so that everything around the kernel call
(what we ask dmsetup, in which order, how we read its answers) is testable on
hosts without device-mapper.  The default runner blocks: call it off the loop.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wrennd.storage.errors import DeviceError

DM_PREFIX = "wrenn-"
MAPPER_DIR = Path("/dev/mapper")
SECTOR = 512
# 4 KiB exceptions: the guest filesystem's block size, so one guest write
# copies one chunk.
DEFAULT_CHUNK_SECTORS = 8
_TIMEOUT_S = 60.0
_DEVNO = re.compile(r"^\d+:\d+$")

Runner = Callable[[Sequence[str]], str]


class DmNotFound(DeviceError):
    """dmsetup reports that the named device does not exist."""


def run_dmsetup(argv: Sequence[str]) -> str:
    """Run ``dmsetup argv...`` and return stdout; a failure raises DeviceError with stderr."""
    cmd = ["dmsetup", *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise DeviceError("dmsetup is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise DeviceError(f"{' '.join(cmd)}: no answer in {_TIMEOUT_S:.0f} s") from e
    if proc.returncode != 0:
        err = proc.stderr.strip()
        exc = DmNotFound if "No such device" in err or "not found" in err else DeviceError
        raise exc(f"{' '.join(cmd)} failed (exit {proc.returncode}): {err}")
    return proc.stdout


def snapshot_table(size_bytes: int, origin: str, cow: str, chunk_sectors: int) -> str:
    """A one-line persistent ``snapshot`` table over all of ``origin``.

    ``origin`` and ``cow`` are block devices as ``major:minor``.  "P" keeps the
    exception store on the CoW device so the layer survives teardown and
    reloads on the next activation (pause/resume).
    """
    if size_bytes <= 0 or size_bytes % SECTOR:
        raise ValueError(f"origin size {size_bytes} is not a positive multiple of {SECTOR} bytes")
    if chunk_sectors <= 0 or chunk_sectors & (chunk_sectors - 1):
        raise ValueError(f"chunk size {chunk_sectors} sectors is not a power of two")
    for what, dev in (("origin", origin), ("cow", cow)):
        if not _DEVNO.match(dev):
            raise ValueError(f"{what} device {dev!r} is not major:minor")
    return f"0 {size_bytes // SECTOR} snapshot {origin} {cow} P {chunk_sectors}"


def cow_file_size(origin_bytes: int, chunk_sectors: int) -> int:
    """A sparse CoW file large enough that every origin chunk can be copied once.

    The persistent store spends one header chunk plus one metadata chunk per
    chunk_bytes/16 exceptions; the file is sparse, so the headroom costs nothing
    until written.
    """
    chunk = chunk_sectors * SECTOR
    chunks = -(-origin_bytes // chunk)
    per_meta = chunk // 16
    meta = 1 + -(-chunks // per_meta)
    return (chunks + meta + 1) * chunk


def dm_name(sandbox_id: str) -> str:
    return DM_PREFIX + sandbox_id


def sandbox_of(name: str) -> str | None:
    return name[len(DM_PREFIX) :] if name.startswith(DM_PREFIX) else None


@dataclass(frozen=True)
class TableLine:
    start: int
    length: int
    target: str
    args: tuple[str, ...]


def parse_tables(text: str) -> dict[str, list[TableLine]]:
    """Parse ``dmsetup table`` output: ``name: start length target args...`` per line."""
    out: dict[str, list[TableLine]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line == "No devices found":
            continue
        name, sep, rest = line.partition(": ")
        fields = rest.split()
        if not sep or len(fields) < 3:
            raise DeviceError(f"unexpected dmsetup table line: {raw!r}")
        entry = TableLine(int(fields[0]), int(fields[1]), fields[2], tuple(fields[3:]))
        out.setdefault(name, []).append(entry)
    return out


class DmSetup:
    """The dmsetup commands the devicemapper backend issues."""

    def __init__(self, runner: Runner = run_dmsetup) -> None:
        self._run = runner

    def create(self, name: str, table: str) -> Path:
        self._run(["create", name, "--table", table])
        return MAPPER_DIR / name

    def open_count(self, name: str) -> int:
        out = self._run(["info", "--columns", "--noheadings", "-o", "open", name])
        try:
            return int(out.strip())
        except ValueError as e:
            raise DeviceError(f"dmsetup info {name}: unexpected open count {out!r}") from e

    def remove(self, name: str) -> bool:
        """Remove ``name``; False when it did not exist.  Refuses while anything holds it open."""
        try:
            held = self.open_count(name)
        except DmNotFound:
            return False
        if held:
            raise DeviceError(
                f"device-mapper device {name} is still open ({held} holder(s)):"
                " the VMM must release the drive before its storage is torn down"
            )
        try:
            self._run(["remove", "--retry", name])
        except DmNotFound:
            return False
        return True

    def tables(self) -> dict[str, list[TableLine]]:
        return parse_tables(self._run(["table"]))

    def targets(self) -> set[str]:
        return {line.split()[0] for line in self._run(["targets"]).splitlines() if line.strip()}
