"""How the API shows sandboxes, templates, images and engine statistics (JSON objects).

The sandbox layer hands over its own objects; the shapes clients see are made
here only, so the layer below never formats for a wire.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from wrennd.sandbox import ImageInfo, Sandbox, SandboxService, TemplateMeta, TimingRecord


def sandbox(service: SandboxService, sb: Sandbox) -> dict[str, Any]:
    rec = sb.record
    d: dict[str, Any] = {
        "id": rec.id,
        "state": rec.state.value,
        "image": rec.image,
        "template": rec.template,
        "vcpus": rec.vcpus,
        "memory_mib": rec.memory_mib,
        "memory_backing": rec.memory_backing,
        "metadata": dict(rec.metadata),
        "timeout_s": rec.timeout_s,
        "expires_at": rec.expires_at,
        "generation": rec.generation,
        "error": rec.error,
        "recovered_from": rec.recovered_from,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "timings": timings(sb.timings),
    }
    live = sb.live
    if live is not None and live.net is not None and live.vmm is not None:
        paths = service.paths(rec.id)
        d["host_address"] = str(live.net.host_address)
        d["vmm"] = {"pid": live.vmm.proc.pid, "api_socket": str(paths.vmm_files.api_socket)}
        if service.cfg.vmm.simulated:
            d["vmm"]["control_socket"] = str(paths.control_socket)
        engine = service.engine_state(sb)
        if engine is not None:
            d["engine"] = engine
        stats = live.uffd.stats() if live.uffd is not None else None
        if stats is not None:
            d["faults"] = {
                "faults": stats.faults,
                "pages_copied": stats.copy_pages,
                "pages_zeroed": stats.zero_pages,
                "pages_prefetched": stats.prefetch_pages,
                "fault_p50_ns": stats.latency_percentile_ns(0.5),
                "fault_p99_ns": stats.latency_percentile_ns(0.99),
                "fault_max_ns": stats.lat_max_ns,
                "histogram": _buckets(stats.lat_hist),
            }
    return d


def timings(records: dict[str, TimingRecord]) -> dict[str, Any]:
    """The last run of each operation: stages (name, owner, ms, wall_ms, start_ms), the
    owners' shares and the total (sandbox/timing.py says how overlaps are counted)."""
    return {op: r.to_json() for op, r in sorted(records.items())}


def _buckets(hist: tuple[int, ...]) -> list[dict[str, int]]:
    """The engine's log2 latency buckets from the first to the last one used."""
    used = [i for i, n in enumerate(hist) if n]
    if not used:
        return []
    return [{"le_ns": 2 ** (i + 1), "count": hist[i]} for i in range(used[0], used[-1] + 1)]


def sandboxes(
    service: SandboxService, state: str | None = None, metadata: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every sandbox in ``state`` whose metadata holds ``metadata``, oldest first."""
    out = []
    for sb in service.registry:
        rec = sb.record
        if state is not None and rec.state.value != state:
            continue
        if metadata and any(rec.metadata.get(k) != v for k, v in metadata.items()):
            continue
        out.append(sandbox(service, sb))
    return sorted(out, key=lambda d: (d["created_at"], d["id"]))


def template(
    meta: TemplateMeta, users: list[str], made: TimingRecord | None = None
) -> dict[str, Any]:
    """A template; ``made``: the timings of its creation (template.create's answer)."""
    d = {**dataclasses.asdict(meta), "sandboxes": users}
    if made is not None:
        d["timings"] = timings({"template_create": made})
    return d


def image(info: ImageInfo, users: list[str]) -> dict[str, Any]:
    return {**dataclasses.asdict(info), "used_by": users}


def engine_states(service: SandboxService) -> dict[str, Any]:
    """Each running sandbox's UFFD engine: serving, filling (percent), detaching or
    detached."""
    out = {}
    for sb in service.registry:
        state = service.engine_state(sb)
        if state is not None:
            out[sb.id] = state
    return out


def uffd_totals(service: SandboxService) -> dict[str, int]:
    """The UFFD engines of the running sandboxes, summed (host.stats)."""
    totals = Counter[str]()
    for sb in service.registry:
        stats = sb.live.uffd.stats() if sb.live is not None and sb.live.uffd else None
        if stats is not None:
            totals["engines"] += 1
            totals["faults"] += stats.faults
            totals["pages_copied"] += stats.copy_pages
            totals["pages_zeroed"] += stats.zero_pages
            totals["pages_prefetched"] += stats.prefetch_pages
            totals["bytes_installed"] += stats.copy_bytes + stats.zero_bytes
    keys = ("engines", "faults", "pages_copied", "pages_zeroed", "pages_prefetched")
    return {k: totals[k] for k in (*keys, "bytes_installed")}
