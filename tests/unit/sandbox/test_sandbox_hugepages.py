"""memory_backing: validation, the huge page pool count, the refusal and how the API shows it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jsonschema
import pytest

from wrennd.cli.commands import SANDBOX_COMMANDS
from wrennd.rpc import errors as rpc
from wrennd.rpc.sandbox_methods import CREATE, TEMPLATE_CREATE
from wrennd.sandbox import hugepages, templates
from wrennd.sandbox.errors import Refused, TemplateMismatch
from wrennd.sandbox.hugepages import HugePagesShort, Pool, admit, backed_pages, check_backing
from wrennd.sandbox.record import SandboxRecord, SandboxState

MEMINFO = Path("/proc/meminfo")


def test_backing_and_memory_size_are_checked() -> None:
    assert check_backing(128, "4k") == "4k" and check_backing(127, "4k") == "4k"
    assert check_backing(128, "2m") == "2m"
    with pytest.raises(Refused, match="not a multiple of 2 MiB") as odd:
        check_backing(129, "2m")
    assert odd.value.code == "invalid_params" and odd.value.data["memory_mib"] == 129
    with pytest.raises(Refused, match="one of 4k, 2m"):
        check_backing(128, "1g")
    assert hugepages.huge_pages_config("2m") == "2M" and hugepages.huge_pages_config("4k") == "None"
    assert hugepages.page_size("2m", 4096) == 2 << 20 and hugepages.page_size("4k", 4096) == 4096


def test_the_api_schemas_take_only_the_two_backings() -> None:
    create = jsonschema.Draft202012Validator(CREATE)
    assert create.is_valid({"image": "base", "memory_backing": "2m"})
    assert not create.is_valid({"image": "base", "memory_backing": "2M"})
    template = jsonschema.Draft202012Validator(TEMPLATE_CREATE)
    assert template.is_valid({"name": "t", "sandbox_id": "sb-000000000001"})
    assert template.is_valid({"name": "t", "sandbox_id": "sb-000000000001", "memory_backing": "4k"})
    assert not template.is_valid(
        {"name": "t", "sandbox_id": "sb-000000000001", "memory_backing": 2}
    )


def _pool(directory: Path, total: int, free: int, resv: int) -> Path:
    directory.mkdir()
    for name, n in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", resv)):
        (directory / name).write_text(f"{n}\n")
    return directory


def test_the_pool_is_read_from_sysfs_and_empty_without_hugetlb(tmp_path: Path) -> None:
    assert Pool.read(_pool(tmp_path / "p", 64, 40, 4)) == Pool(64, 40, 4)
    assert Pool.read(tmp_path / "absent") == Pool(0, 0, 0)


def test_the_real_pool_matches_meminfo() -> None:
    if not hugepages.POOL.is_dir():
        pytest.skip(f"hugetlb: this kernel has no 2 MiB pool ({hugepages.POOL} is missing)")
    for _ in range(5):  # another user of the pool may change it between the two reads
        pool = Pool.read()
        info = dict(line.split(":", 1) for line in MEMINFO.read_text().splitlines())
        if info["Hugepagesize"].split()[0] != "2048":
            pytest.skip(f"meminfo counts the default huge page size, {info['Hugepagesize']}")
        counts = [int(info[k].split()[0]) for k in ("HugePages_Total", "HugePages_Free")]
        if counts == [pool.total, pool.free]:
            return
    pytest.fail(f"{pool} disagrees with /proc/meminfo {counts}")


def _smaps(proc: Path, pid: int, private_kib: int, shared_kib: int) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "smaps_rollup").write_text(
        f"Rss: 100 kB\nShared_Hugetlb:   {shared_kib} kB\nPrivate_Hugetlb:  {private_kib} kB\n"
    )


def test_backed_pages_count_hugetlb_of_a_vmm(tmp_path: Path) -> None:
    _smaps(tmp_path, 7, 4096, 2048)
    assert backed_pages(7, tmp_path) == 3
    assert backed_pages(8, tmp_path) == 0, "a VMM that is gone holds nothing"
    assert backed_pages(None, tmp_path) == 0
    assert backed_pages(1) == 0, "init maps no hugetlb pages"


def test_admission_counts_reserved_and_promised_pages(tmp_path: Path) -> None:
    _smaps(tmp_path, 7, 10 * 2048, 0)  # a running 64 MiB guest with 10 of 32 pages in
    pool = Pool(total=64, free=40, reserved=4)
    others = [(64, 7), (8, None)]  # and a 8 MiB one whose VMM is not spawned yet: 4 pages
    admit(12, others, pool, tmp_path)  # 40 - 4 - (22 + 4) = 10 available, 6 needed
    admit(20, others, pool, tmp_path)
    with pytest.raises(HugePagesShort) as short:
        admit(22, others, pool, tmp_path)
    e = short.value
    assert e.code == "resource_exhausted" and e.resource == "huge_pages"
    assert e.data == {
        "resource": "huge_pages",
        "needed": 11,
        "free": 40,
        "total": 64,
        "reserved": 4,
        "promised": 26,
        "available": 10,
        "page_size_kib": 2048,
    }
    assert "needs 11 huge pages" in str(e) and "vm.nr_hugepages" in str(e)
    with pytest.raises(HugePagesShort, match="0 of 0 are free"):
        admit(2, [], Pool(0, 0, 0))


def test_the_refusal_is_the_apis_resource_exhausted_with_the_counts() -> None:
    e = HugePagesShort(32, Pool(8, 8, 0), 0)
    err = rpc.from_code(e.code, str(e), e.data)
    assert isinstance(err, rpc.ResourceExhausted)
    body = err.to_json()
    assert body["code"] == rpc.RESOURCE_EXHAUSTED
    assert body["data"]["type"] == "resource_exhausted"
    assert (body["data"]["resource"], body["data"]["needed"], body["data"]["free"]) == (
        "huge_pages",
        32,
        8,
    )


def test_records_and_templates_keep_the_backing(tmp_path: Path) -> None:
    rec = SandboxRecord("sb-000000000001", SandboxState.PAUSED, 1, 64, image="base")
    old = rec.to_json()
    del old["memory_backing"]  # written before the field existed
    assert SandboxRecord.from_json(old, "old").memory_backing == "4k"
    rec.memory_backing = "2m"
    assert SandboxRecord.from_json(json.loads(json.dumps(rec.to_json())), "x") == rec

    meta = templates.new_meta("t", 1, 64, "base", rec.id, rec.memory_backing)
    (tmp_path / "meta.json").write_text(json.dumps({**meta.__dict__}))
    assert templates.TemplateMeta.load(tmp_path / "meta.json").memory_backing == "2m"
    legacy = {k: v for k, v in meta.__dict__.items() if k != "memory_backing"}
    (tmp_path / "meta.json").write_text(json.dumps(legacy))
    assert templates.TemplateMeta.load(tmp_path / "meta.json").memory_backing == "4k"

    templates.check_clone(meta, None, None, None)
    templates.check_clone(meta, 1, 64, "2m")
    with pytest.raises(TemplateMismatch, match="memory_backing=2m"):
        templates.check_clone(meta, None, None, "4k")
    templates.check_backing(rec, None)
    templates.check_backing(rec, "2m")
    with pytest.raises(TemplateMismatch, match="runs on 2m pages"):
        templates.check_backing(rec, "4k")


def test_wrennctl_create_passes_the_backing() -> None:
    (create,) = [c for c in SANDBOX_COMMANDS if c.words == ("sandbox", "create")]
    parser = argparse.ArgumentParser()
    create.arguments(parser)
    params = create.params(parser.parse_args(["base", "--memory-backing", "2m"]))
    assert params is not None and params["memory_backing"] == "2m"
    params = create.params(parser.parse_args(["base"]))
    assert params is not None and "memory_backing" not in params
    with pytest.raises(SystemExit):
        parser.parse_args(["base", "--memory-backing", "1g"])
