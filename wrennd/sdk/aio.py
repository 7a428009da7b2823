"""The asyncio SDK: ``AsyncSandbox``, its ``files``, and ``AsyncTemplate``.

    async with await AsyncSandbox.create("base") as sb:
        result = await sb.exec("echo hi")
        print(result.stdout)          # b'hi\\n'

Each object holds one connection to the daemon's socket (``socket``, else
``$WRENND_SOCKET``, else the configured ``run_dir/wrennd.sock``).  API errors
are raised as the classes of wrennd.sdk.errors.
"""

from __future__ import annotations

import base64
import builtins
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from wrennd import config
from wrennd.rpc.client import Client
from wrennd.sdk import transfer
from wrennd.sdk.errors import translate
from wrennd.sdk.types import ExecResult, FileInfo, SandboxInfo, Transferred

T = TypeVar("T")


def default_socket(socket: str | Path | None = None) -> Path:
    if socket is not None:
        return Path(socket)
    if os.environ.get("WRENND_SOCKET"):
        return Path(os.environ["WRENND_SOCKET"])
    return config.load().socket_path


async def _translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as e:
        raise translate(e) from e


async def connect(socket: str | Path | None = None) -> Client:
    return await _translated(Client.connect(default_socket(socket)))


def _command(cmd: str | Sequence[str]) -> dict[str, Any]:
    if isinstance(cmd, str):
        return {"shell": cmd}
    return {"argv": list(cmd)}


class AsyncFiles:
    """A sandbox's files (``sb.files``): any size, streamed, byte-exact."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def _call(self, method: str, **params: Any) -> Any:
        return await self._sb._call(method, {"id": self._sb.id, **params})

    async def read(self, path: str) -> bytes:
        """The whole file (streamed; for large files prefer ``download``)."""
        parts: builtins.list[bytes] = []
        await _translated(transfer.download_to(self._sb.client, self._sb.id, path, parts.append))
        return b"".join(parts)

    async def write(self, path: str, data: bytes | str, *, mode: int | None = None) -> FileInfo:
        """Replace ``path`` with ``data`` (text is written as UTF-8); atomic in the guest."""
        raw = data.encode() if isinstance(data, str) else data
        chunks = [raw[i : i + transfer.CHUNK] for i in range(0, len(raw), transfer.CHUNK)]
        sent = transfer.upload(self._sb.client, self._sb.id, path, chunks or [b""], mode=mode)
        return FileInfo.from_json(await _translated(sent))

    async def upload(
        self,
        local: str | Path,
        remote: str,
        *,
        mode: int | None = None,
        progress: transfer.Progress | None = None,
    ) -> FileInfo:
        """Copy a host file into the sandbox; ``FileInfo.sha256`` is what the guest got."""
        local = Path(local)
        sent = transfer.upload(
            self._sb.client,
            self._sb.id,
            remote,
            transfer.file_chunks(local),
            mode=mode,
            total=transfer.local_size(local),
            progress=progress,
        )
        return FileInfo.from_json(await _translated(sent))

    async def download(
        self, remote: str, local: str | Path, *, progress: transfer.Progress | None = None
    ) -> Transferred:
        """Copy a guest file to the host (complete or not at all); checks its sha256."""
        got = transfer.download(
            self._sb.client, self._sb.id, remote, Path(local), progress=progress
        )
        result = await _translated(got)
        return Transferred(str(local), result["size"], result["sha256"])

    async def list(self, path: str) -> builtins.list[FileInfo]:
        """A directory's entries, sorted by name."""
        found = await self._call("sandbox.files.list", path=path)
        return [FileInfo.from_json(e) for e in found["entries"]]

    async def stat(self, path: str) -> FileInfo:
        return FileInfo.from_json(await self._call("sandbox.files.stat", path=path))

    async def mkdir(self, path: str, *, parents: bool = True) -> bool:
        """Create a directory (like ``mkdir -p``); False if it existed."""
        return bool(
            (await self._call("sandbox.files.mkdir", path=path, parents=parents))["created"]
        )

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._call("sandbox.files.remove", path=path, recursive=recursive)


class AsyncSandbox:
    """One sandbox.  ``async with`` destroys it on exit unless ``keep`` is set."""

    def __init__(self, client: Client, info: dict[str, Any], *, keep: bool = False) -> None:
        self.client = client
        self.info = SandboxInfo.from_json(info)
        self.keep = keep
        self.files = AsyncFiles(self)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> str:
        return self.info.state

    async def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await _translated(self.client.call(method, params))

    @classmethod
    async def create(
        cls,
        image: str | None = None,
        template: str | None = None,
        *,
        socket: str | Path | None = None,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        keep: bool = False,
        memory_backing: str | None = None,
    ) -> AsyncSandbox:
        """Boot a sandbox from ``image`` or clone one from ``template`` (exactly one);
        ``memory_backing="2m"`` backs its memory by 2 MiB huge pages."""
        params: dict[str, Any] = {
            k: v
            for k, v in {
                "image": image,
                "template": template,
                "vcpus": vcpus,
                "memory_mib": memory_mib,
                "memory_backing": memory_backing,
                "timeout_s": timeout_s,
                "env": env,
                "metadata": metadata,
            }.items()
            if v is not None
        }
        client = await connect(socket)
        try:
            info = await _translated(client.call("sandbox.create", params))
        except BaseException:
            await client.close()
            raise
        return cls(client, info, keep=keep)

    @classmethod
    async def connect(cls, sandbox_id: str, *, socket: str | Path | None = None) -> AsyncSandbox:
        """An existing sandbox; ``async with`` on it keeps it unless ``keep=False`` is set."""
        client = await connect(socket)
        try:
            info = await _translated(client.call("sandbox.get", {"id": sandbox_id}))
        except BaseException:
            await client.close()
            raise
        return cls(client, info, keep=True)

    @classmethod
    async def list(
        cls, *, socket: str | Path | None = None, state: str | None = None
    ) -> builtins.list[SandboxInfo]:
        """Every sandbox (in ``state`` if given), oldest first."""
        async with _connected(socket) as client:
            found = await _translated(
                client.call("sandbox.list", {"state": state} if state else {})
            )
        return [SandboxInfo.from_json(s) for s in found["sandboxes"]]

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: bytes | str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- the guest's timeout, not ours
    ) -> ExecResult:
        """Run ``cmd`` (a string goes to ``/bin/sh -c``, a list is argv) to completion."""
        params: dict[str, Any] = {"id": self.id, **_command(cmd)}
        if stdin is not None:
            raw = stdin.encode() if isinstance(stdin, str) else stdin
            params["stdin"] = base64.b64encode(raw).decode()
        for key, value in (("env", env), ("cwd", cwd), ("user", user), ("timeout", timeout)):
            if value is not None:
                params[key] = value
        r = await self._call("sandbox.exec", params)
        return ExecResult(
            exit_code=r["code"],
            stdout=base64.b64decode(r["stdout"]),
            stderr=base64.b64decode(r["stderr"]),
            signal=r["signal"],
            timed_out=r["timed_out"],
            pid=r["pid"],
        )

    async def refresh(self) -> SandboxInfo:
        self.info = SandboxInfo.from_json(await self._call("sandbox.get", {"id": self.id}))
        return self.info

    async def pause(self) -> SandboxInfo:
        """Snapshot the sandbox to disk and stop its VM."""
        self.info = SandboxInfo.from_json(await self._call("sandbox.pause", {"id": self.id}))
        return self.info

    async def resume(self) -> SandboxInfo:
        """Start it again from its snapshot (memory paged in lazily)."""
        self.info = SandboxInfo.from_json(await self._call("sandbox.resume", {"id": self.id}))
        return self.info

    async def set_timeout(self, timeout_s: float | None) -> SandboxInfo:
        params = {"id": self.id, "timeout_s": timeout_s}
        self.info = SandboxInfo.from_json(await self._call("sandbox.set_timeout", params))
        return self.info

    async def destroy(self) -> None:
        await self._call("sandbox.destroy", {"id": self.id})

    async def close(self) -> None:
        """Close the connection (the sandbox stays)."""
        await self.client.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self.keep:
                await self.destroy()
        finally:
            await self.close()


@asynccontextmanager
async def _connected(socket: str | Path | None) -> AsyncIterator[Client]:
    client = await connect(socket)
    try:
        yield client
    finally:
        await client.close()


class AsyncTemplate:
    """A named snapshot that sandboxes are cloned from."""

    def __init__(self, info: dict[str, Any], socket: str | Path | None = None) -> None:
        self.info = info
        self.socket = socket

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @classmethod
    async def create(
        cls, name: str, sandbox: AsyncSandbox | str, *, socket: str | Path | None = None
    ) -> AsyncTemplate:
        """Freeze ``sandbox`` (running or paused) into the template ``name``."""
        sid = sandbox if isinstance(sandbox, str) else sandbox.id
        async with _connected(socket) as client:
            made = await _translated(
                client.call("template.create", {"name": name, "sandbox_id": sid})
            )
        return cls(made, socket)

    @classmethod
    async def get(cls, name: str, *, socket: str | Path | None = None) -> AsyncTemplate:
        async with _connected(socket) as client:
            return cls(await _translated(client.call("template.get", {"name": name})), socket)

    @classmethod
    async def list(cls, *, socket: str | Path | None = None) -> builtins.list[AsyncTemplate]:
        async with _connected(socket) as client:
            found = await _translated(client.call("template.list"))
        return [cls(t, socket) for t in found["templates"]]

    async def spawn(self, **kw: Any) -> AsyncSandbox:
        """A new sandbox cloned from this template (``AsyncSandbox.create`` keywords)."""
        return await AsyncSandbox.create(template=self.name, socket=self.socket, **kw)

    async def delete(self) -> None:
        async with _connected(self.socket) as client:
            await _translated(client.call("template.delete", {"name": self.name}))
