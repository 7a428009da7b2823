"""What host.stats and host.info report: process resource use, event-loop lag, and sections
that other components contribute.

Components (the sandbox manager, the UFFD engines, storage) register a
provider under a section name; a provider is a cheap, non-blocking callable
returning a JSON-able mapping of what it counts.  Nothing is reported for a
component that has not registered: no placeholder numbers.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Provider = Callable[[], Mapping[str, Any]]


class Sections:
    """Named providers, each producing one section of an answer."""

    def __init__(self) -> None:
        self._providers: dict[str, Provider] = {}

    def add(self, name: str, provider: Provider) -> None:
        if name in self._providers:
            raise ValueError(f"section {name!r} already has a provider")
        self._providers[name] = provider

    def collect(self) -> dict[str, Any]:
        return {name: dict(provider()) for name, provider in self._providers.items()}


_STATUS_KEYS = {"VmRSS": "rss_bytes", "VmHWM": "rss_peak_bytes", "VmSize": "vm_bytes"}


def _proc_status() -> dict[str, int]:
    # procfs reads are served from kernel memory: they never wait on a disk.
    out: dict[str, int] = {}
    with Path("/proc/self/status").open(encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _STATUS_KEYS:
                out[_STATUS_KEYS[key]] = int(value.split()[0]) * 1024  # kB
            elif key == "Threads":
                out["threads"] = int(value)
    return out


def process_stats(started_monotonic: float) -> dict[str, Any]:
    """This process's resource use: CPU, memory, faults, context switches, fds, threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - started_monotonic, 3),
        "cpu_user_s": ru.ru_utime,
        "cpu_system_s": ru.ru_stime,
        "max_rss_bytes": ru.ru_maxrss * 1024,
        "minor_faults": ru.ru_minflt,
        "major_faults": ru.ru_majflt,
        "voluntary_switches": ru.ru_nvcsw,
        "involuntary_switches": ru.ru_nivcsw,
        "open_fds": sum(1 for _ in Path("/proc/self/fd").iterdir()),
        "fd_limit": soft,
        **_proc_status(),
    }


class LoopLag:
    """Measures how late the event loop wakes a sleeper: the delay every callback suffers."""

    def __init__(self, interval: float = 0.05, keep: int = 2400) -> None:
        self.interval = interval
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=keep)

    async def run(self) -> None:
        # time.monotonic, not loop.time(): uvloop's clock is cached per iteration, in ms.
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._samples.append((now, max(0.0, now - before - self.interval)))

    def percentiles(self, window_s: float | None = None) -> dict[str, Any]:
        """Lag percentiles in ms over the last ``window_s`` seconds (all kept samples if None)."""
        since = time.monotonic() - window_s if window_s is not None else float("-inf")
        lags = sorted(lag for t, lag in self._samples if t >= since)
        out: dict[str, Any] = {"samples": len(lags), "interval_ms": self.interval * 1e3}
        if lags:
            for p in (50, 90, 99):
                out[f"p{p}_ms"] = round(_percentile(lags, p) * 1e3, 3)
            out["max_ms"] = round(lags[-1] * 1e3, 3)
        return out


def _percentile(sorted_values: list[float], p: float) -> float:
    # Nearest rank.
    rank = math.ceil(len(sorted_values) * p / 100) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, rank))]
