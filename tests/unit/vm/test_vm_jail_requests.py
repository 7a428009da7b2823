"""Under the jailer every path the daemon gives Firecracker is a jail path.

The requests are built from what ``Jail.boot_files``/``restore_files`` (the
functions bring-up uses) return and from the jail's snapshot paths. Each body
must validate against the bundled Firecracker spec, and every field the spec
defines as a path (found in the spec, not listed here) must name a file inside
the chroot: one the daemon placed there (the same inode as the host file) or,
for what the VMM writes, a directory the jail user owns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from wrennd.sandbox import jail as jailed
from wrennd.sandbox.jail import Jail, JailSettings
from wrennd.vm.api import ApiCall, MemBackend, Requests, parse_version
from wrennd.vm.launcher import FirecrackerArgs, VmmFiles
from wrennd_sim.fcsim.spec import api_spec, load_document

pytestmark = pytest.mark.root
UID = GID = 4321


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _resolve(doc, doc["definitions"][ref.rsplit("/", 1)[1]])
    return schema


def path_fields(
    doc: dict[str, Any], schema: dict[str, Any], body: Any
) -> Iterator[tuple[str, str]]:
    """(field, value) for every property of the body the spec calls a path."""
    schema = _resolve(doc, schema)
    for name, sub in schema.get("properties", {}).items():
        if not isinstance(body, dict) or name not in body:
            continue
        if "path" in name:
            yield name, body[name]
        yield from path_fields(doc, sub, body[name])


def body_schema(doc: dict[str, Any], call: ApiCall) -> dict[str, Any]:
    op, _ = api_spec().find(call.method, call.path)
    params = doc["paths"][op.template][call.method.lower()]["parameters"]
    return next(p["schema"] for p in params if p["in"] == "body")


@pytest.fixture
def jail(tmp_path: Path) -> Jail:
    settings = JailSettings(
        jailer_bin=Path("/usr/local/bin/jailer"),
        exec_file=Path("/usr/local/bin/firecracker"),
        uid=UID,
        gid=GID,
        chroot_base=tmp_path / "jail",
        parent_cgroup="wrennd",
    )
    j = Jail(settings.spec("sb-0123456789ab"), None)
    j.prepare()
    return j


def test_every_spec_path_in_a_jailed_request_is_inside_the_chroot(
    jail: Jail, tmp_path: Path
) -> None:
    host = {name: tmp_path / name for name in ("vmlinux", "initrd", "layer.ext4", "vmstate")}
    for p in host.values():
        p.write_bytes(b"x")
    kernel, initrd, rootfs = jail.boot_files(host["vmlinux"], host["initrd"], host["layer.ext4"])
    uffd_host = jail.root / "run" / "uffd.sock"
    vmstate, uffd, rootfs2 = jail.restore_files(host["vmstate"], host["layer.ext4"], uffd_host)
    assert rootfs2 == rootfs, "a snapshot load opens the drive where the boot put it"
    r = Requests(parse_version(api_spec().version))
    calls = [
        r.boot_source(kernel, "console=ttyS0", initrd),
        r.drive("rootfs", rootfs, is_root_device=True),
        r.patch_drive("rootfs", rootfs2),
        r.snapshot_create(jailed.PENDING_VMSTATE, jailed.PENDING_MEMFILE, "Diff"),
        r.snapshot_load(vmstate, MemBackend("Uffd", uffd), track_dirty_pages=True),
    ]
    placed = {
        kernel: host["vmlinux"],
        initrd: host["initrd"],
        rootfs: host["layer.ext4"],
        vmstate: host["vmstate"],
    }
    written = {jailed.PENDING_VMSTATE, jailed.PENDING_MEMFILE}
    doc = load_document()
    seen = set()
    for call in calls:
        op, _ = api_spec().find(call.method, call.path)
        api_spec().validate_body(op, call.body)
        for field, value in path_fields(doc, body_schema(doc, call), call.body):
            seen.add(field)
            inside = jail.spec.host_path(PurePosixPath(value))
            assert jail.root in inside.parents, f"{field}={value} is not in the chroot"
            if value in placed:
                assert inside.stat().st_ino == placed[value].stat().st_ino, field
            elif value in written:
                assert inside.parent.stat().st_uid == UID, f"{field}: jail user cannot write"
            else:
                assert value == uffd and inside == uffd_host, f"{field}={value}: unknown"
    want = {"kernel_image_path", "initrd_path", "path_on_host", "snapshot_path"}
    assert want | {"mem_file_path", "backend_path"} <= seen
    assert (jail.root / "rootfs").stat().st_uid == UID, "the VMM writes its root drive"
    assert (jail.root / "vmlinux").stat().st_uid == os.geteuid(), "a shared kernel stays root's"


def test_jailed_command_line_has_jail_paths_and_no_second_id(jail: Jail) -> None:
    files = VmmFiles.under(jail.root / "run")
    argv = jail.argv(FirecrackerArgs(Path("/usr/local/bin/firecracker"), "sb_0123456789ab", files))
    tail = argv[argv.index("--") + 1 :]
    assert "--id" not in tail, "the jailer passes --id itself"
    assert tail[tail.index("--api-sock") + 1] == "/run/api.sock"
    assert tail[tail.index("--log-path") + 1] == "/run/vmm.log"
    head = argv[: argv.index("--")]
    assert head[head.index("--id") + 1] == "sb-0123456789ab"
    assert "--new-pid-ns" not in head and "--daemonize" not in head, "the launcher watches it"
    assert head[head.index("--cgroup-version") + 1] == "2"


def test_take_out_links_the_vmm_output_and_removes_the_jail(jail: Jail, tmp_path: Path) -> None:
    inside = jail.spec.host_path(PurePosixPath(jailed.PENDING_MEMFILE))
    inside.write_bytes(b"memory")
    out = tmp_path / "memfile.pending"
    jail.take_out(jailed.PENDING_MEMFILE, out)
    assert out.read_bytes() == b"memory" and not inside.exists()
    jail.remove()
    assert not jail.spec.jail_dir.exists()
    jail.remove()  # again: nothing left to do
