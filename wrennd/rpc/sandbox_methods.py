"""``sandbox.*``, ``template.*`` and ``image.*``: the sandbox service over JSON-RPC.

Lifecycle calls (create, pause, resume, destroy) are never cancelled by a
client; pause and resume report their stages as ``progress`` notifications.
``sandbox.exec`` with ``stream: true`` sends output as ``stream``
notifications while the command runs and answers with the exit status.
Sandbox-layer errors become the typed application errors of
wrennd.rpc.errors; the shapes of results are wrennd.rpc.views'.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc import exec_methods, transfer_methods, views
from wrennd.rpc.exec_methods import ENCODING, EXEC, b64, encode, spec
from wrennd.rpc.methods import CallContext, Kind, MethodTable
from wrennd.rpc.schemas import ID, NAME, PATH, STR_MAP, TIMEOUT, obj, translated
from wrennd.sandbox import Output, Progress, SandboxService, SandboxState

# sandbox.files.read answers in one message: larger files go through sandbox.files.download.
READ_MAX_BYTES = 2 << 20

# Guest memory pages: 4 KiB, or 2 MiB hugetlb pages (memory_mib even; the host's pool).
MEMORY_BACKING = {
    "enum": ["4k", "2m"],
    "description": "guest memory pages: 4 KiB (default) or 2 MiB huge pages from the host's"
    " reserved pool; a template keeps its sandbox's",
}
CREATE = {
    **obj(
        [],
        image=NAME,
        template=NAME,
        vcpus={"type": "integer", "minimum": 1, "maximum": 32},
        memory_mib={"type": "integer", "minimum": 16, "maximum": 1 << 20},
        memory_backing=MEMORY_BACKING,
        timeout_s=TIMEOUT,
        env=STR_MAP,
        metadata=STR_MAP,
    ),
    "oneOf": [{"required": ["image"]}, {"required": ["template"]}],
}
IMAGE_REGISTER = obj(["name", "path"], name=NAME, path=PATH)
PROCESS = obj(["id", "process"], id=ID, process={"type": "string", "minLength": 1})
OUTPUT = obj(
    ["id", "process"],
    id=ID,
    process={"type": "string", "minLength": 1},
    follow={"type": "boolean", "description": "keep streaming until the process exits"},
    since={"type": "integer", "minimum": 0, "description": "first output seq to send"},
    encoding=ENCODING,
)
SIGNAL = obj(
    ["id", "process"],
    id=ID,
    process={"type": "string", "minLength": 1},
    signal={"type": ["integer", "string"]},
    group={"type": "boolean"},
)
TEMPLATE_CREATE = obj(
    ["name", "sandbox_id"], name=NAME, sandbox_id=ID, memory_backing=MEMORY_BACKING
)
BY_NAME = obj(["name"], name=NAME)
BY_ID = obj(["id"], id=ID)
LIST = obj([], state={"enum": [s.value for s in SandboxState]}, metadata=STR_MAP)
SET_TIMEOUT = obj(["id", "timeout_s"], id=ID, timeout_s=TIMEOUT)
FILE = obj(["id", "path"], id=ID, path=PATH)
_START_FIELDS = ("id", "argv", "shell", "env", "cwd", "user", "stdin", "timeout")
PROCESS_START = {
    **obj(["id"], **{k: v for k, v in EXEC["properties"].items() if k in _START_FIELDS}),
    "oneOf": EXEC["oneOf"],
}
WRITE = obj(
    ["id", "path", "data"],
    id=ID,
    path=PATH,
    data={"type": "string", "description": "base64"},
    mode={"type": "integer", "minimum": 0, "maximum": 0o7777},
)
MKDIR = obj(["id", "path"], id=ID, path=PATH, parents={"type": "boolean"})
REMOVE = obj(["id", "path"], id=ID, path=PATH, recursive={"type": "boolean"})
_translated = translated
_b64 = b64
_spec = spec


def _progress(ctx: CallContext) -> Progress:
    async def report(stage: str, done: int, total: int, **facts: int) -> None:
        await ctx.progress(stage=stage, done=done, total=total, **facts)

    return report


def register(methods: MethodTable, service: SandboxService) -> None:
    _register_lifecycle(methods, service)
    _register_templates(methods, service)
    _register_images(methods, service)
    _register_processes(methods, service)
    _register_queries(methods, service)
    _register_files(methods, service)
    exec_methods.register(methods, service)
    transfer_methods.register(methods, service)


def _register_lifecycle(methods: MethodTable, service: SandboxService) -> None:
    life = Kind.LIFECYCLE
    lifecycle = service.lifecycle

    @methods.register("sandbox.create", params=CREATE, kind=life, mutating=True)
    async def create(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Boot a sandbox from an image, or clone one from a template (progress: stages,
        each report with the ms of the stages finished since the last). The answer is the
        sandbox, whose ``timings.create`` are this call's stage timings."""
        with _translated():
            sb = await lifecycle.create(
                p.get("image"),
                template=p.get("template"),
                vcpus=p.get("vcpus"),
                memory_mib=p.get("memory_mib"),
                timeout_s=p.get("timeout_s"),
                env=p.get("env"),
                metadata=p.get("metadata"),
                progress=_progress(ctx),
                memory_backing=p.get("memory_backing"),
            )
        return views.sandbox(service, sb)

    @methods.register("sandbox.pause", params=BY_ID, kind=life, mutating=True)
    async def pause(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Snapshot a running sandbox to disk and stop its VM (progress: stages). The
        answer's ``timings.pause`` are this call's stage timings."""
        with _translated():
            return views.sandbox(service, await lifecycle.pause(p["id"], _progress(ctx)))

    @methods.register("sandbox.resume", params=BY_ID, kind=life, mutating=True)
    async def resume(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Start a paused sandbox from its snapshot, memory paged in lazily (progress:
        stages). The answer's ``timings.resume`` are this call's stage timings."""
        with _translated():
            return views.sandbox(service, await lifecycle.resume(p["id"], _progress(ctx)))

    @methods.register("sandbox.destroy", params=BY_ID, kind=life, mutating=True)
    async def destroy(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Stop a sandbox and remove everything it has; ``timings.destroy``: its stages."""
        with _translated():
            done = await lifecycle.destroy(p["id"])
        return {"id": p["id"], "destroyed": True, "timings": views.timings({"destroy": done})}

    @methods.register("sandbox.set_timeout", params=SET_TIMEOUT, mutating=True)
    async def set_timeout(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Set (seconds from now) or clear (null) the sandbox's timeout."""
        with _translated():
            return views.sandbox(service, await lifecycle.set_timeout(p["id"], p["timeout_s"]))


def _register_queries(methods: MethodTable, service: SandboxService) -> None:
    @methods.register("sandbox.get", params=BY_ID)
    async def get(ctx: CallContext, p: dict[str, Any]) -> Any:
        """One sandbox, with its host resource usage and ``timings``: the stage timings of
        the last create, pause, resume and template_create (each: ``operation``,
        ``total_ms``, ``owners`` {daemon, vmm, guest} ms, ``stages`` [{name, owner, ms,
        wall_ms, start_ms}]; concurrent stages are charged on the critical path, so the
        stages' ``ms`` add up to ``total_ms``)."""
        with _translated():
            sb = service.registry.get(p["id"])
            return {**views.sandbox(service, sb), "usage": await service.usage(sb)}

    @methods.register("sandbox.list", params=LIST)
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Every sandbox (optionally in one state, or with matching metadata), oldest first."""
        return {"sandboxes": views.sandboxes(service, p.get("state"), p.get("metadata"))}


def _register_files(methods: MethodTable, service: SandboxService) -> None:
    @methods.register("sandbox.files.read", params=FILE)
    async def read(ctx: CallContext, p: dict[str, Any]) -> Any:
        """A small file's bytes in one answer (base64; over 2 MiB: use sandbox.files.download)."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                data = await _read_small(guest, p["path"])
        return {"path": p["path"], "size": len(data), "data": base64.b64encode(data).decode()}

    @methods.register("sandbox.files.write", params=WRITE, mutating=True)
    async def write(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Replace a small file with base64 data in one call (any size: sandbox.files.upload)."""
        data = _b64(p["data"], "data")
        with _translated():
            async with service.guest(p["id"]) as guest:
                info = await guest.write_file(p["path"], data, mode=p.get("mode"))
        return info.to_json()

    @methods.register("sandbox.files.stat", params=FILE)
    async def stat(ctx: CallContext, p: dict[str, Any]) -> Any:
        """A guest path's lstat."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                return (await guest.stat(p["path"])).to_json()

    @methods.register("sandbox.files.list", params=FILE)
    async def list_dir(ctx: CallContext, p: dict[str, Any]) -> Any:
        """A guest directory's entries, sorted by name."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                entries = await guest.list_dir(p["path"])
        return {"entries": [e.to_json() for e in entries]}

    @methods.register("sandbox.files.mkdir", params=MKDIR, mutating=True)
    async def mkdir(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Make a guest directory (with parents by default); created is false if it existed."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                created = await guest.mkdir(p["path"], parents=p.get("parents", True))
        return {"created": created}

    @methods.register("sandbox.files.remove", params=REMOVE, mutating=True)
    async def remove(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Remove a guest file, or a directory tree with recursive."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                await guest.remove(p["path"], recursive=p.get("recursive", False))
        return {"removed": True}


async def _read_small(guest: Any, path: str) -> bytes:
    parts, size = [], 0
    async for chunk in guest.read_file(path):
        size += len(chunk)
        if size > READ_MAX_BYTES:
            raise rpc.InvalidParams(
                f"{path} is over {READ_MAX_BYTES} bytes: use sandbox.files.download",
                errors=[{"path": "/path", "message": "file too large for one message"}],
            )
        parts.append(chunk)
    return b"".join(parts)


def _register_templates(methods: MethodTable, service: SandboxService) -> None:
    catalog = service.templates

    @methods.register("template.create", params=TEMPLATE_CREATE, kind=Kind.LIFECYCLE, mutating=True)
    async def create(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Freeze a running or paused sandbox into a named template (progress: stages);
        ``timings.template_create``: the build's stage timings."""
        with _translated():
            meta, made = await catalog.create(
                p["sandbox_id"], p["name"], _progress(ctx), p.get("memory_backing")
            )
        return views.template(meta, [], made)

    @methods.register("template.get", params=BY_NAME)
    async def get(ctx: CallContext, p: dict[str, Any]) -> Any:
        """One template and the sandboxes cloned from it."""
        with _translated():
            meta = await catalog.get(p["name"])
        return views.template(meta, catalog.users(meta.name))

    @methods.register("template.list")
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Every template."""
        with _translated():
            metas = await catalog.all()
        return {"templates": [views.template(m, catalog.users(m.name)) for m in metas]}

    @methods.register("template.delete", params=BY_NAME, kind=Kind.LIFECYCLE, mutating=True)
    async def delete(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Delete a template no sandbox uses."""
        with _translated():
            await catalog.delete(p["name"])
        return {"name": p["name"], "deleted": True}


def _register_images(methods: MethodTable, service: SandboxService) -> None:
    catalog = service.images

    @methods.register("image.register", params=IMAGE_REGISTER, kind=Kind.LIFECYCLE, mutating=True)
    async def register_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Register an ext4 file of this host as a base image."""
        with _translated():
            made = await catalog.register(p["name"], Path(p["path"]))
        return views.image(made, [])

    @methods.register("image.list")
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Every registered image and the sandboxes made from it."""
        with _translated():
            found = await catalog.all()
        return {"images": [views.image(i, catalog.users(i.name)) for i in found]}

    @methods.register("image.delete", params=BY_NAME, kind=Kind.LIFECYCLE, mutating=True)
    async def delete(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Delete an image no sandbox uses."""
        with _translated():
            await catalog.delete(p["name"])
        return {"name": p["name"], "deleted": True}


def _register_processes(methods: MethodTable, service: SandboxService) -> None:
    """Background processes in the guest: they outlive the call that started them."""

    @methods.register("sandbox.process.start", params=PROCESS_START, mutating=True)
    async def start(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Start a background process in the guest; it outlives this call."""
        spec = _spec(p)
        with _translated():
            async with service.guest(p["id"]) as guest:
                return (await guest.start(spec)).to_json()

    @methods.register("sandbox.process.list", params=BY_ID)
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        """The sandbox's background processes."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                return {"processes": [x.to_json() for x in await guest.processes()]}

    @methods.register("sandbox.process.get", params=PROCESS)
    async def get(ctx: CallContext, p: dict[str, Any]) -> Any:
        """One background process."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                return (await guest.process(p["process"])).to_json()

    @methods.register("sandbox.process.signal", params=SIGNAL, mutating=True)
    async def signal(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Send a signal to a background process (its process group by default)."""
        with _translated():
            async with service.guest(p["id"]) as guest:
                await guest.signal(p["process"], p.get("signal", 15), p.get("group", True))
        return {"signalled": True}

    @methods.register("sandbox.process.output", params=OUTPUT)
    async def output(ctx: CallContext, p: dict[str, Any]) -> Any:
        """Retained output (stream notifications; ``follow``: then live output until the
        process exits), then the process's state."""
        encoding = p.get("encoding", "base64")
        with _translated():
            async with service.guest(p["id"]) as guest:
                events = guest.attach(
                    p["process"], since=p.get("since", 0), follow=p.get("follow", False)
                )
                try:
                    async for event in events:
                        if isinstance(event, Output):
                            data = encode(event.data, encoding)
                            note = {"stream": event.stream, "data": data, "seq": event.seq}
                            await ctx.notify("stream", note)
                finally:
                    close = getattr(events, "aclose", None)
                    if close is not None:
                        await close()
                return (await guest.process(p["process"])).to_json()
