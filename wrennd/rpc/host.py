"""``host.info`` and ``host.stats``: what this host is and how the daemon is doing."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import time
from typing import Any

from wrennd import __version__, features
from wrennd.config import Settings
from wrennd.metrics import LoopLag, Sections, process_stats
from wrennd.rpc.methods import CallContext, Kind, MethodTable
from wrennd.rpc.server import RpcServer

STATS_PARAMS = {
    "type": "object",
    "properties": {
        "lag_window_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "description": "event-loop lag percentiles over the last N seconds",
        }
    },
    "additionalProperties": False,
}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _config_facts(settings: Settings) -> dict[str, Any]:
    return {
        "state_dir": str(settings.state_dir),
        "run_dir": str(settings.run_dir),
        "kernel": str(settings.kernel_path),
        "storage_backend": settings.storage_backend,
        "max_generations": settings.max_generations,
        "uffd_batch_bytes": settings.uffd_batch_bytes,
        "prefetch_max_bytes": settings.prefetch_max_bytes,
        "host_network": str(settings.host_network),
        "ttl_action": settings.ttl_action,
        "use_jailer": settings.use_jailer,
        "jail_uid": settings.jail_uid,
        "jail_gid": settings.jail_gid,
        "jail_cgroup": settings.jail_cgroup,
        "log_level": settings.log_level,
    }


@dataclasses.dataclass
class HostFacts:
    """What host.info reports that does not change while the daemon runs (probed at start)."""

    settings: Settings
    socket_path: str
    socket_activated: bool
    vmm: features.Binary
    jailer: features.Binary | None

    def static_info(self) -> dict[str, Any]:
        uname = os.uname()
        info: dict[str, Any] = {
            "version": {
                "wrennd": __version__,
                "python": platform.python_version(),
                "uvloop": _dist_version("uvloop"),
                "jsonschema": _dist_version("jsonschema"),
                "kernel": uname.release,
            },
            "host": {"hostname": uname.nodename, "machine": uname.machine, "cpus": os.cpu_count()},
            "features": {
                f.name: {"available": f.available, "reason": f.reason}
                for f in features.all_features()
            },
            "vmm": dataclasses.asdict(self.vmm),
            "config": _config_facts(self.settings),
            "socket": {"path": self.socket_path, "activated": self.socket_activated},
        }
        if self.jailer is not None:
            info["jailer"] = dataclasses.asdict(self.jailer)
        return info


def register(
    table: MethodTable,
    facts: HostFacts,
    server: RpcServer,
    lag: LoopLag,
    info_sections: Sections,
    stats_sections: Sections,
    started: float | None = None,
) -> None:
    started = time.monotonic() if started is None else started
    static = facts.static_info()

    @table.register("host.info", kind=Kind.READ, doc="versions, host features, configuration")
    async def host_info(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        return {**static, **info_sections.collect()}

    @table.register(
        "host.stats",
        params=STATS_PARAMS,
        kind=Kind.READ,
        doc="process resource use, event-loop lag, RPC and component counters",
    )
    async def host_stats(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "process": process_stats(started),
            "event_loop": lag.percentiles(params.get("lag_window_s")),
            "rpc": server.stats(),
            **stats_sections.collect(),
        }

    @table.register("host.methods", kind=Kind.READ, doc="the methods this daemon answers")
    async def host_methods(ctx: CallContext, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "kind": m.kind.value,
                "mutating": m.mutating,
                "positional": list(m.positional),
                "params": dict(m.params),
                "doc": m.doc,
            }
            for m in table
        ]
