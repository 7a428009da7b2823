"""Async Firecracker API client: HTTP/1.1 over the VMM's Unix socket (aiohttp).

Firecracker answers a refused request with 4xx and ``{"fault_message": ...}``;
the client raises ``FirecrackerError`` carrying that message. The client
learns the VMM's version from ``GET /version`` and builds every request for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp

from wrennd.vm.api import (
    ActionType,
    ApiCall,
    CacheType,
    HugePages,
    IoEngine,
    LogLevel,
    MemBackend,
    Requests,
    SnapshotType,
    Version,
    parse_version,
)
from wrennd.vm.errors import ApiTransportError, FirecrackerError

# The host part is ignored on a Unix socket; Firecracker expects "localhost".
_BASE = "http://localhost"


class FirecrackerClient:
    """One client per VMM process. ``await detect_version()`` before building requests."""

    def __init__(self, api_socket: Path, *, timeout: float = 30.0) -> None:
        self.api_socket = api_socket
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._requests: Requests | None = None

    async def __aenter__(self) -> FirecrackerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=str(self.api_socket))
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    @property
    def requests(self) -> Requests:
        if self._requests is None:
            raise RuntimeError("call detect_version() before building requests")
        return self._requests

    @property
    def version(self) -> Version:
        return self.requests.version

    async def call(self, call: ApiCall) -> Any:
        """Send one request; return the decoded JSON answer (None for 204)."""
        data = None if call.body is None else json.dumps(call.body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(
                call.method, _BASE + call.path, data=data, headers=headers
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ApiTransportError(
                f"{call.method} {call.path} on {self.api_socket}: {type(e).__name__}: {e}"
            ) from e
        if status >= 300:
            raise FirecrackerError(call.method, call.path, status, _fault_message(text))
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiTransportError(
                f"{call.method} {call.path}: answer is not JSON: {text[:200]!r}"
            ) from e

    async def detect_version(self) -> Version:
        answer = await self.call(ApiCall("GET", "/version"))
        if not isinstance(answer, dict) or not isinstance(answer.get("firecracker_version"), str):
            raise ApiTransportError(f"GET /version: unexpected answer {answer!r}")
        self._requests = Requests(parse_version(answer["firecracker_version"]))
        return self._requests.version

    # --- thin wrappers over the builders ------------------------------------
    async def describe_instance(self) -> dict[str, Any]:
        answer = await self.call(self.requests.describe_instance())
        if not isinstance(answer, dict):
            raise ApiTransportError(f"GET /: unexpected answer {answer!r}")
        return answer

    async def put_logger(self, log_path: str, level: LogLevel = "Info") -> None:
        await self.call(self.requests.logger(log_path, level))

    async def put_metrics(self, metrics_path: str) -> None:
        await self.call(self.requests.metrics(metrics_path))

    async def put_boot_source(
        self, kernel: str, boot_args: str | None = None, initrd: str | None = None
    ) -> None:
        await self.call(self.requests.boot_source(kernel, boot_args, initrd))

    async def put_drive(
        self,
        drive_id: str,
        path_on_host: str,
        *,
        is_root_device: bool,
        is_read_only: bool = False,
        cache_type: CacheType | None = None,
        io_engine: IoEngine | None = None,
    ) -> None:
        await self.call(
            self.requests.drive(
                drive_id,
                path_on_host,
                is_root_device=is_root_device,
                is_read_only=is_read_only,
                cache_type=cache_type,
                io_engine=io_engine,
            )
        )

    async def patch_drive(self, drive_id: str, path_on_host: str) -> None:
        await self.call(self.requests.patch_drive(drive_id, path_on_host))

    async def put_network_interface(
        self, iface_id: str, host_dev_name: str, guest_mac: str | None = None
    ) -> None:
        await self.call(self.requests.network_interface(iface_id, host_dev_name, guest_mac))

    async def put_machine_config(
        self,
        vcpu_count: int,
        mem_size_mib: int,
        *,
        track_dirty_pages: bool | None = None,
        huge_pages: HugePages | None = None,
    ) -> None:
        await self.call(
            self.requests.machine_config(
                vcpu_count, mem_size_mib, track_dirty_pages=track_dirty_pages, huge_pages=huge_pages
            )
        )

    async def action(self, action_type: ActionType) -> None:
        await self.call(self.requests.action(action_type))

    async def start(self) -> None:
        await self.action("InstanceStart")

    async def pause(self) -> None:
        await self.call(self.requests.vm_state("Paused"))

    async def resume(self) -> None:
        await self.call(self.requests.vm_state("Resumed"))

    async def create_snapshot(
        self, snapshot_path: str, mem_file_path: str, snapshot_type: SnapshotType = "Full"
    ) -> None:
        await self.call(self.requests.snapshot_create(snapshot_path, mem_file_path, snapshot_type))

    async def load_snapshot(
        self,
        snapshot_path: str,
        backend: MemBackend,
        *,
        track_dirty_pages: bool,
        resume_vm: bool = False,
        network_overrides: Mapping[str, str] | None = None,
    ) -> None:
        await self.call(
            self.requests.snapshot_load(
                snapshot_path,
                backend,
                track_dirty_pages=track_dirty_pages,
                resume_vm=resume_vm,
                network_overrides=network_overrides,
            )
        )

    async def put_balloon(self, amount_mib: int, deflate_on_oom: bool) -> None:
        await self.call(self.requests.put_balloon(amount_mib, deflate_on_oom))

    async def patch_balloon(self, amount_mib: int) -> None:
        await self.call(self.requests.patch_balloon(amount_mib))

    async def set_state(self, state: Literal["Paused", "Resumed"]) -> None:
        await self.call(self.requests.vm_state(state))


def _fault_message(text: str) -> str:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return text.strip() or "(empty answer)"
    if isinstance(doc, dict) and isinstance(doc.get("fault_message"), str):
        return str(doc["fault_message"])
    return text.strip()
