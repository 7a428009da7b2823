"""Every request the client can build validates against the shipped Firecracker spec.

The cases are generated from the builders' signatures: each builder is called
with every value of each Literal parameter, with optional fields present and
absent, for several Firecracker versions.
"""

from __future__ import annotations

import inspect
import itertools
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args, get_origin

import pytest

from wrennd.vm.api import ApiCall, MemBackend, Requests, Version, parse_version
from wrennd.vm.errors import UnsupportedByVersion
from wrennd_sim.fcsim.spec import SpecError, api_spec

VERSIONS: list[Version] = [(1, 7, 0), (1, 10, 0), (1, 12, 0), parse_version(api_spec().version)]
SAMPLES: dict[str, list[Any]] = {
    "vcpu_count": [1, 2],
    "mem_size_mib": [128],
    "amount_mib": [0, 64],
    "stats_polling_interval_s": [None, 5],
    "drive_id": ["rootfs"],
    "iface_id": ["eth0"],
    "guest_mac": [None, "06:00:AC:10:00:02"],
    "network_overrides": [None, {"eth0": "tap1"}],
}


def _values(name: str, annotation: Any, default: Any) -> list[Any]:
    if name in SAMPLES:
        return SAMPLES[name]
    hint = annotation
    options: list[Any] = []
    for arm in get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else [hint]:
        if arm is type(None):
            options.append(None)
        elif get_origin(arm) is Literal:
            options += list(get_args(arm))
        elif arm is bool:
            options += [True, False]
        elif arm is str:
            options.append(f"/srv/wrennd/{name}")
        elif arm is int:
            options.append(1)
        elif arm is MemBackend:
            options += [MemBackend("File", "/srv/mem"), MemBackend("Uffd", "/run/uffd.sock")]
        elif get_origin(arm) is Mapping:
            options.append({"eth0": "tap1"})
        else:
            raise AssertionError(f"no sample for {name}: {arm!r}; add one to SAMPLES")
    if default is not inspect.Parameter.empty and default not in options:
        options.append(default)
    return options


def generated_calls(req: Requests) -> Iterator[tuple[str, ApiCall]]:
    for name, method in inspect.getmembers(req, inspect.ismethod):
        if name.startswith("_") or name == "accepts":
            continue
        hints = typing.get_type_hints(method)
        params = list(inspect.signature(method).parameters.values())
        choices = [_values(p.name, hints[p.name], p.default) for p in params]
        for combo in itertools.product(*choices):
            kwargs = {p.name: v for p, v in zip(params, combo, strict=True)}
            try:
                yield f"{name}({kwargs})", method(**kwargs)
            except UnsupportedByVersion:
                assert kwargs.get("network_overrides"), f"{name} refused {kwargs}"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: ".".join(map(str, v)))
def test_every_built_request_validates(version: Version) -> None:
    spec = api_spec()
    seen = set()
    count = 0
    for label, call in generated_calls(Requests(version)):
        op, _ = spec.find(call.method, call.path)
        try:
            spec.validate_body(op, call.body)
        except SpecError as e:
            pytest.fail(f"{label} -> {call}: {e}")
        seen.add(op.operation_id)
        count += 1
    assert count > 100
    # Every operation the issue names is built by some builder.
    assert {
        "putLogger",
        "putMetrics",
        "putGuestBootSource",
        "putGuestDriveByID",
        "putGuestNetworkInterfaceByID",
        "putMachineConfiguration",
        "createSyncAction",
        "patchVm",
        "createSnapshot",
        "loadSnapshot",
        "describeInstance",
        "getFirecrackerVersion",
        "putBalloon",
        "patchBalloon",
        "describeBalloonConfig",
    } <= seen


def test_version_gating() -> None:
    old = Requests((1, 9, 0)).snapshot_load("/s", MemBackend("File", "/m"), track_dirty_pages=True)
    assert old.body is not None
    assert old.body["enable_diff_snapshots"] is True and "track_dirty_pages" not in old.body
    new = Requests((1, 16, 1)).snapshot_load(
        "/s", MemBackend("Uffd", "/u"), track_dirty_pages=False
    )
    assert new.body is not None
    assert new.body["track_dirty_pages"] is False and "enable_diff_snapshots" not in new.body
    with pytest.raises(UnsupportedByVersion, match=r"network_overrides needs Firecracker >= 1\.12"):
        Requests((1, 11, 0)).snapshot_load(
            "/s", MemBackend("File", "/m"), track_dirty_pages=True, network_overrides={"a": "b"}
        )
    with pytest.raises(UnsupportedByVersion):
        Requests((1, 6, 0))


def test_parse_version() -> None:
    assert parse_version("1.16.1") == (1, 16, 1)
    assert parse_version("v1.7.0-dev") == (1, 7, 0)
    with pytest.raises(ValueError):
        parse_version("firecracker")


def test_builders_refuse_bad_arguments() -> None:
    r = Requests((1, 16, 1))
    with pytest.raises(ValueError, match="drive_id"):
        r.drive("../etc", "/x", is_root_device=True)
    with pytest.raises(ValueError, match="vcpu_count"):
        r.machine_config(0, 128)
    with pytest.raises(ValueError, match="mem_size_mib"):
        r.machine_config(1, 0)
