"""The daemon carries no simulator code and never loads the simulator package.

Static imports are checked by import-linter (``make lint``); these tests cover
what it cannot see: the compiled extensions, and what is loaded at run time.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import wrennd
from wrennd import _native
from wrennd_sim import _simnative

# Loads the named module, then every module of the daemon's package, and
# prints which wrennd_sim modules ended up in sys.modules.
_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    importlib.import_module(sys.argv[1])
    import wrennd
    for m in pkgutil.walk_packages(wrennd.__path__, "wrennd."):
        if not m.name.endswith(".__main__"):
            importlib.import_module(m.name)
    print(json.dumps(sorted(k for k in sys.modules if k.split(".")[0] == "wrennd_sim")))
    """
)

VMM_SIDE = {"wr_vmm_map", "wr_vmm_read", "wr_touch", "wr_touch_order", "wr_uffd_register"}
MINIMAL_HANDLER = {"wr_minimal_start", "wr_minimal_faults", "wr_minimal_stop"}


def _names(lib: object) -> set[str]:
    return {n for n in dir(lib) if not n.startswith("_")}


def test_simulator_module_has_the_vmm_side() -> None:
    assert _names(_simnative.lib) >= VMM_SIDE | MINIMAL_HANDLER


def test_daemon_module_exports_nothing_of_the_simulator() -> None:
    shared = _names(_native.lib) & _names(_simnative.lib)
    assert shared == set(), f"in both extensions: {sorted(shared)}"


@pytest.mark.parametrize("name", sorted(VMM_SIDE | MINIMAL_HANDLER))
def test_daemon_binary_does_not_contain_vmm_side_code(name: str) -> None:
    # Not only undeclared to cffi: not compiled in (the symbol table would name it).
    assert name.encode() not in Path(_native.__file__).read_bytes()
    assert name.encode() in Path(_simnative.__file__).read_bytes()


def test_uffd_is_created_by_the_daemon_module_only() -> None:
    """One implementation: the daemon's probe, which the VMM stand-in also uses."""
    assert "wr_uffd_create" in _names(_native.lib)
    assert "wr_uffd_create" not in _names(_simnative.lib)


def _sim_modules_loaded_by(module: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_importing_the_daemon_never_loads_the_simulator() -> None:
    assert _sim_modules_loaded_by("wrennd.daemon") == []


def test_probe_sees_the_simulator_when_it_is_loaded() -> None:
    # The same probe, with a simulator module loaded first, must report it.
    assert "wrennd_sim.uffd_peer" in _sim_modules_loaded_by("wrennd_sim.uffd_peer")


# What wrennd.rpc may import besides its own modules (pyproject.toml says why).
RPC_MAY_IMPORT = {
    "wrennd.sandbox",
    "wrennd.config",
    "wrennd.log",
    "wrennd.features",
    "wrennd.metrics",
}


def test_rpc_contract_forbids_every_other_part_of_the_daemon() -> None:
    """The contract lists what rpc must not import: a new package must join the list."""
    pyproject = Path(wrennd.__file__).resolve().parents[1] / "pyproject.toml"
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    (rpc,) = [c for c in contracts if c["id"] == "rpc-via-sandbox"]
    # _native is compiled: import-linter cannot see it, so it cannot be listed.
    parts = {f"wrennd.{m.name}" for m in pkgutil.iter_modules(wrennd.__path__)} - {"wrennd._native"}
    assert set(rpc["forbidden_modules"]) == parts - RPC_MAY_IMPORT - {"wrennd.rpc"} | {"wrennd_sim"}
