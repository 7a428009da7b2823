"""Templates: a paused sandbox frozen under a name, and the files clones start from.

``state_dir/templates/<name>/``: ``rootfs.ext4`` (the sandbox's disk
flattened into an independent image), ``snapshot/`` (its memory header with a
link to every generation it names, the prefetch map and the vmstate) and
``meta.json`` (vcpus and memory, which every clone must use).  A template is
built in a hidden temporary directory and renamed into place, so it exists
whole or not at all; a crash leaves only a temporary that startup removes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import shutil
import time
from pathlib import Path

from wrennd.durable import (
    atomic_write,
    atomic_write_json,
    fsync_dir,
    is_temp_name,
    publish_no_replace,
    temp_name,
)
from wrennd.log import kv
from wrennd.sandbox.environment import Deps
from wrennd.sandbox.errors import (
    SnapshotCorrupt,
    TemplateExists,
    TemplateInUse,
    TemplateMismatch,
    TemplateNotFound,
)
from wrennd.sandbox.record import SandboxRecord
from wrennd.sandbox.timing import Timings
from wrennd.snapshot import Header, delete_snapshot, read_prefetch_map, write_prefetch_map
from wrennd.snapshot.store import commit, read_header

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class TemplateMeta:
    name: str
    vcpus: int
    memory_mib: int
    image: str | None
    source_sandbox: str
    created_at: float
    # The page size its snapshot was taken with (written by templates made before it: 4k).
    memory_backing: str = "4k"

    @classmethod
    def load(cls, path: Path) -> TemplateMeta:
        try:
            return cls(**json.loads(path.read_bytes()))
        except (OSError, ValueError, TypeError) as e:
            raise SnapshotCorrupt(
                f"{path}: unreadable template metadata: {e}", file=str(path)
            ) from e


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TemplateNotFound(name)
    return name


def template_dir(deps: Deps, name: str) -> Path:
    return deps.cfg.state_dir / "templates" / check_name(name)


def rootfs_of(tdir: Path) -> Path:
    return tdir / "rootfs.ext4"


def snapshot_of(tdir: Path) -> Path:
    return tdir / "snapshot"


def copy_snapshot(src: Path, dst: Path, store: Path) -> Header:
    """dst becomes the same snapshot as src: the header with links to its generations (no
    memory copied), the prefetch map and the vmstate.  Blocking."""
    header = read_header(src)
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write(dst / "vmstate", (src / "vmstate").read_bytes())
    ranges = read_prefetch_map(src)
    if ranges:
        write_prefetch_map(dst, ranges, header.memory_size)
    commit(dst, store, header)
    return header


def _discard(tdir: Path, store: Path) -> None:
    if snapshot_of(tdir).exists():
        delete_snapshot(snapshot_of(tdir), store)
    shutil.rmtree(tdir, ignore_errors=True)


def _publish(tmp: Path, final: Path, meta: TemplateMeta) -> None:
    atomic_write_json(tmp / "meta.json", dataclasses.asdict(meta))
    try:
        publish_no_replace(tmp, final)
    except FileExistsError as e:
        raise TemplateExists(meta.name) from e


async def build(deps: Deps, sandbox_id: str, meta: TemplateMeta, t: Timings) -> TemplateMeta:
    """Flatten the (paused) sandbox's disk and link its memory into a new template."""
    final = template_dir(deps, meta.name)
    if final.exists():
        raise TemplateExists(meta.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    store = deps.cfg.store
    try:
        tmp.mkdir()
        async with t.stage("flatten", "daemon"):
            await deps.storage.flatten(sandbox_id, rootfs_of(tmp))
            flat = await asyncio.to_thread(lambda: rootfs_of(tmp).stat().st_blocks * 512)
        async with t.stage("snapshot_link", "daemon", rootfs_bytes=flat):
            src = deps.paths(sandbox_id).snapshot_dir
            await asyncio.to_thread(copy_snapshot, src, snapshot_of(tmp), store)
        async with t.stage("publish", "daemon"):
            await asyncio.to_thread(_publish, tmp, final, meta)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(_discard, tmp, store))
        raise
    log.info("template created", extra=kv(template=meta.name, sandbox=sandbox_id))
    return meta


def new_meta(
    name: str,
    vcpus: int,
    memory_mib: int,
    image: str | None,
    sid: str,
    memory_backing: str = "4k",
) -> TemplateMeta:
    return TemplateMeta(
        check_name(name), vcpus, memory_mib, image, sid, time.time(), memory_backing
    )


def load(deps: Deps, name: str) -> TemplateMeta:
    tdir = template_dir(deps, name)
    if not (tdir / "meta.json").is_file():
        raise TemplateNotFound(name)
    return TemplateMeta.load(tdir / "meta.json")


def list_all(deps: Deps) -> list[TemplateMeta]:
    root = deps.cfg.state_dir / "templates"
    if not root.is_dir():
        return []
    return [
        TemplateMeta.load(d / "meta.json")
        for d in sorted(root.iterdir())
        if not d.name.startswith(".") and (d / "meta.json").is_file()
    ]


def delete(deps: Deps, name: str, users: list[str]) -> None:
    """Remove a template nobody depends on (blocking)."""
    if users:
        raise TemplateInUse(name, users)
    tdir = template_dir(deps, name)
    if not tdir.is_dir():
        raise TemplateNotFound(name)
    _discard(tdir, deps.cfg.store)
    fsync_dir(tdir.parent)
    log.info("template deleted", extra=kv(template=name))


def cleanup_temporaries(deps: Deps) -> list[str]:
    """Half-built templates a crash left (startup).  Blocking."""
    root = deps.cfg.state_dir / "templates"
    if not root.is_dir():
        return []
    removed = []
    for d in root.iterdir():
        if is_temp_name(d.name) and d.is_dir():
            _discard(d, deps.cfg.store)
            removed.append(d.name)
    return removed


def snapshot_dirs(deps: Deps) -> list[Path]:
    root = deps.cfg.state_dir / "templates"
    if not root.is_dir():
        return []
    return [snapshot_of(d) for d in root.iterdir() if snapshot_of(d).is_dir()]


def check_clone(
    meta: TemplateMeta,
    vcpus: int | None,
    memory_mib: int | None,
    memory_backing: str | None = None,
) -> None:
    """A template fixes the machine it was taken with: a clone cannot change it (nor its
    page size: Firecracker restores a snapshot with the pages it was taken with)."""
    for what, asked, fixed in (
        ("vcpus", vcpus, meta.vcpus),
        ("memory_mib", memory_mib, meta.memory_mib),
        ("memory_backing", memory_backing, meta.memory_backing),
    ):
        if asked is not None and asked != fixed:
            raise TemplateMismatch(
                f"template {meta.name!r} was taken with {what}={fixed}; a clone cannot ask"
                f" for {what}={asked}"
            )


def check_backing(rec: SandboxRecord, memory_backing: str | None) -> None:
    """A template is taken with its sandbox's pages: asking for others is refused."""
    if memory_backing is not None and memory_backing != rec.memory_backing:
        raise TemplateMismatch(
            f"sandbox {rec.id} runs on {rec.memory_backing} pages: its template cannot be"
            f" {memory_backing} (a snapshot is restored with the pages it was taken with)"
        )
