"""device-mapper table strings, command lines and output parsing (no kernel needed)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from wrennd.storage import DeviceError
from wrennd.storage.dmsetup import (
    DmNotFound,
    DmSetup,
    TableLine,
    cow_file_size,
    dm_name,
    parse_tables,
    sandbox_of,
    snapshot_table,
)


class Recorder:
    def __init__(self, answers: dict[str, str | Exception] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        answer = self.answers.get(argv[0], "")
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_snapshot_table() -> None:
    assert snapshot_table(1 << 30, "7:0", "7:1", 8) == "0 2097152 snapshot 7:0 7:1 P 8"
    assert snapshot_table(512, "259:3", "7:12", 16) == "0 1 snapshot 259:3 7:12 P 16"


@pytest.mark.parametrize(
    ("size", "origin", "cow", "chunk", "match"),
    [
        (0, "7:0", "7:1", 8, "positive multiple of 512"),
        (1000, "7:0", "7:1", 8, "positive multiple of 512"),
        (4096, "/dev/loop0", "7:1", 8, "origin device '/dev/loop0'"),
        (4096, "7:0", "7 1", 8, "cow device"),
        (4096, "7:0", "7:1", 12, "power of two"),
        (4096, "7:0", "7:1", 0, "power of two"),
    ],
)
def test_snapshot_table_rejects_bad_input(
    size: int, origin: str, cow: str, chunk: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        snapshot_table(size, origin, cow, chunk)


@pytest.mark.parametrize("origin", [512, 4096, 1 << 20, (1 << 30) + 512, 10 << 30])
@pytest.mark.parametrize("chunk_sectors", [8, 16, 256])
def test_cow_file_holds_every_chunk_and_its_metadata(origin: int, chunk_sectors: int) -> None:
    chunk = chunk_sectors * 512
    chunks = -(-origin // chunk)
    per_area = chunk // 16  # 16-byte exception records per metadata chunk
    # header + one metadata chunk per area (plus the next, allocated when one fills) + data
    needed = (1 + chunks // per_area + 1 + chunks) * chunk
    size = cow_file_size(origin, chunk_sectors)
    assert size >= needed and size % chunk == 0
    assert size - origin < origin // 64 + 4 * chunk  # and not wildly more


def test_names() -> None:
    assert dm_name("abc-1") == "wrenn-abc-1"
    assert sandbox_of("wrenn-abc-1") == "abc-1"
    assert sandbox_of("docker-8:1-123-pool") is None


def test_parse_tables() -> None:
    text = (
        "wrenn-a: 0 2097152 snapshot 7:0 7:1 P 8\n"
        "vg-root: 0 100 linear 8:2 2048\n"
        "vg-root: 100 50 linear 8:3 0\n"
    )
    tables = parse_tables(text)
    assert tables["wrenn-a"] == [TableLine(0, 2097152, "snapshot", ("7:0", "7:1", "P", "8"))]
    assert [t.start for t in tables["vg-root"]] == [0, 100]
    assert parse_tables("No devices found\n") == {}
    with pytest.raises(DeviceError, match="unexpected dmsetup table line"):
        parse_tables("garbage\n")


def test_create_command() -> None:
    rec = Recorder()
    path = DmSetup(rec).create("wrenn-x", "0 8 snapshot 7:0 7:1 P 8")
    assert rec.calls == [["create", "wrenn-x", "--table", "0 8 snapshot 7:0 7:1 P 8"]]
    assert str(path) == "/dev/mapper/wrenn-x"


def test_remove_checks_holders_first() -> None:
    rec = Recorder({"info": "0\n"})
    assert DmSetup(rec).remove("wrenn-x")
    assert rec.calls == [
        ["info", "--columns", "--noheadings", "-o", "open", "wrenn-x"],
        ["remove", "--retry", "wrenn-x"],
    ]


def test_remove_refuses_while_open() -> None:
    rec = Recorder({"info": "  2\n"})
    with pytest.raises(DeviceError, match=r"wrenn-x is still open \(2 holder"):
        DmSetup(rec).remove("wrenn-x")
    assert [c[0] for c in rec.calls] == ["info"]


def test_remove_of_a_missing_device() -> None:
    rec = Recorder({"info": DmNotFound("Device does not exist.")})
    assert DmSetup(rec).remove("wrenn-x") is False
    assert [c[0] for c in rec.calls] == ["info"]


def test_unexpected_info_output() -> None:
    with pytest.raises(DeviceError, match="unexpected open count"):
        DmSetup(Recorder({"info": "wat"})).open_count("wrenn-x")


def test_targets() -> None:
    rec = Recorder({"targets": "snapshot         v1.16.0\nlinear           v1.4.0\n"})
    assert DmSetup(rec).targets() == {"snapshot", "linear"}
