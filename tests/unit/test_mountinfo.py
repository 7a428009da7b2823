"""The one mountinfo parser, and fcsim's choice of the host mounts a guest must not keep."""

from __future__ import annotations

from pathlib import Path

from wrennd import mountinfo
from wrennd_sim.fcsim.guestboot import foreign_loop_mounts

TABLE = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
41 22 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
60 22 7:1 / /tmp/state\\040one rw - btrfs /dev/loop1 rw
61 60 7:2 / /tmp/state\\040one/layers/sb rw - ext4 /dev/loop2 rw
62 22 7:3 / /srv/other rw - ext4 /dev/loop3 rw
63 62 0:50 / /srv/other/run rw - tmpfs tmpfs rw
bad line without separator
"""


def test_parse_unescapes_paths_and_reads_type_and_source() -> None:
    mounts = mountinfo.parse(TABLE)
    assert len(mounts) == 6, "the malformed line is skipped"
    assert mounts[2] == mountinfo.Mount(Path("/tmp/state one"), "btrfs", "/dev/loop1")
    assert mountinfo.of_type("cgroup2", mounts) == Path("/sys/fs/cgroup")
    assert mountinfo.of_type("xfs", mounts) is None


def test_under_is_deepest_first_and_exact() -> None:
    mounts = mountinfo.parse(TABLE)
    got = [m.target for m in mountinfo.under(Path("/tmp/state one"), mounts)]
    assert got == [Path("/tmp/state one/layers/sb"), Path("/tmp/state one")]
    assert mountinfo.under(Path("/tmp/state"), mounts) == [], "a prefix is not a parent"


def test_a_guest_forgets_loop_mounts_off_its_own_path() -> None:
    mounts = mountinfo.parse(TABLE)
    # The guest's rootfs is mounted inside state one: that mount and its parents stay.
    keep = "/tmp/state one/layers/sb/"
    assert foreign_loop_mounts(mounts, keep) == [Path("/srv/other")]
    # A guest elsewhere keeps none of them; a mount goes before the one it sits on.
    assert foreign_loop_mounts(mounts, "/var/lib/g") == [
        Path("/tmp/state one/layers/sb"),
        Path("/tmp/state one"),
        Path("/srv/other"),
    ]


def test_the_guests_own_path_is_resolved_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "state" / "jail"
    real.mkdir(parents=True)
    (tmp_path / "jail-link").symlink_to(real)
    table = [
        mountinfo.Mount(tmp_path / "state", "btrfs", "/dev/loop4"),
        mountinfo.Mount(real / "guest-root", "ext4", "/dev/loop5"),
    ]
    assert foreign_loop_mounts(table, str(tmp_path / "jail-link" / "guest-root")) == []
