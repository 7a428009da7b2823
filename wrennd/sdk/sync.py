"""The blocking SDK: ``Sandbox``, its ``files``, and ``Template``, over the asyncio SDK.

    with Sandbox.create("base") as sb:
        print(sb.exec(["printf", "\\\\x00\\\\xff"]).stdout)   # b'\\x00\\xff'

Calls run on a private event loop in a daemon thread, one per object tree
(a sandbox and its files share it); the objects are not thread-safe.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from wrennd.sdk import transfer
from wrennd.sdk.aio import AsyncFiles, AsyncSandbox, AsyncTemplate
from wrennd.sdk.types import ExecResult, FileInfo, SandboxInfo, Transferred

T = TypeVar("T")


class _Loop:
    """An event loop in its own thread; ``run`` blocks until a coroutine is done there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="wrennd-sdk")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _once(coro: Coroutine[Any, Any, T]) -> T:
    loop = _Loop()
    try:
        return loop.run(coro)
    finally:
        loop.stop()


class Files:
    """A sandbox's files (``sb.files``); see AsyncFiles for each call."""

    def __init__(self, inner: AsyncFiles, loop: _Loop) -> None:
        self._inner = inner
        self._loop = loop

    def read(self, path: str) -> bytes:
        return self._loop.run(self._inner.read(path))

    def write(self, path: str, data: bytes | str, *, mode: int | None = None) -> FileInfo:
        return self._loop.run(self._inner.write(path, data, mode=mode))

    def upload(
        self,
        local: str | Path,
        remote: str,
        *,
        mode: int | None = None,
        progress: transfer.Progress | None = None,
    ) -> FileInfo:
        return self._loop.run(self._inner.upload(local, remote, mode=mode, progress=progress))

    def download(
        self, remote: str, local: str | Path, *, progress: transfer.Progress | None = None
    ) -> Transferred:
        return self._loop.run(self._inner.download(remote, local, progress=progress))

    def list(self, path: str) -> builtins.list[FileInfo]:
        return self._loop.run(self._inner.list(path))

    def stat(self, path: str) -> FileInfo:
        return self._loop.run(self._inner.stat(path))

    def mkdir(self, path: str, *, parents: bool = True) -> bool:
        return self._loop.run(self._inner.mkdir(path, parents=parents))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._loop.run(self._inner.remove(path, recursive=recursive))


class Sandbox:
    """One sandbox.  ``with`` destroys it on exit unless ``keep`` is set; see AsyncSandbox."""

    def __init__(self, inner: AsyncSandbox, loop: _Loop) -> None:
        self._inner = inner
        self._loop = loop
        self.files = Files(inner.files, loop)

    @classmethod
    def _open(cls, make: Any) -> Sandbox:
        loop = _Loop()
        try:
            return cls(loop.run(make()), loop)
        except BaseException:
            loop.stop()
            raise

    @classmethod
    def create(
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
    ) -> Sandbox:
        """Boot a sandbox from ``image`` or clone one from ``template`` (exactly one);
        ``memory_backing="2m"`` backs its memory by 2 MiB huge pages."""
        return cls._open(
            lambda: AsyncSandbox.create(
                image,
                template,
                socket=socket,
                vcpus=vcpus,
                memory_mib=memory_mib,
                memory_backing=memory_backing,
                timeout_s=timeout_s,
                env=env,
                metadata=metadata,
                keep=keep,
            )
        )

    @classmethod
    def connect(cls, sandbox_id: str, *, socket: str | Path | None = None) -> Sandbox:
        """An existing sandbox (kept on ``with`` exit unless ``keep`` is set to False)."""
        return cls._open(lambda: AsyncSandbox.connect(sandbox_id, socket=socket))

    @classmethod
    def list(
        cls, *, socket: str | Path | None = None, state: str | None = None
    ) -> builtins.list[SandboxInfo]:
        return _once(AsyncSandbox.list(socket=socket, state=state))

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def info(self) -> SandboxInfo:
        return self._inner.info

    @property
    def state(self) -> str:
        return self._inner.state

    @property
    def keep(self) -> bool:
        return self._inner.keep

    @keep.setter
    def keep(self, value: bool) -> None:
        self._inner.keep = value

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: bytes | str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``cmd`` (a string goes to ``/bin/sh -c``, a list is argv) to completion."""
        return self._loop.run(
            self._inner.exec(cmd, stdin=stdin, env=env, cwd=cwd, user=user, timeout=timeout)
        )

    def refresh(self) -> SandboxInfo:
        return self._loop.run(self._inner.refresh())

    def pause(self) -> SandboxInfo:
        return self._loop.run(self._inner.pause())

    def resume(self) -> SandboxInfo:
        return self._loop.run(self._inner.resume())

    def set_timeout(self, timeout_s: float | None) -> SandboxInfo:
        return self._loop.run(self._inner.set_timeout(timeout_s))

    def destroy(self) -> None:
        self._loop.run(self._inner.destroy())

    def close(self) -> None:
        """Close the connection and the loop thread (the sandbox stays)."""
        try:
            self._loop.run(self._inner.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self.keep:
                self.destroy()
        finally:
            self.close()


class Template:
    """A named snapshot that sandboxes are cloned from; see AsyncTemplate."""

    def __init__(self, inner: AsyncTemplate) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def info(self) -> dict[str, Any]:
        return self._inner.info

    @classmethod
    def create(
        cls, name: str, sandbox: Sandbox | str, *, socket: str | Path | None = None
    ) -> Template:
        sid = sandbox if isinstance(sandbox, str) else sandbox.id
        return cls(_once(AsyncTemplate.create(name, sid, socket=socket)))

    @classmethod
    def get(cls, name: str, *, socket: str | Path | None = None) -> Template:
        return cls(_once(AsyncTemplate.get(name, socket=socket)))

    @classmethod
    def list(cls, *, socket: str | Path | None = None) -> builtins.list[Template]:
        return [cls(t) for t in _once(AsyncTemplate.list(socket=socket))]

    def spawn(self, **kw: Any) -> Sandbox:
        return Sandbox.create(template=self.name, socket=self._inner.socket, **kw)

    def delete(self) -> None:
        _once(self._inner.delete())
