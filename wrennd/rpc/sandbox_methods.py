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
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.rpc import views
from wrennd.rpc.methods import CallContext, Kind, MethodTable
from wrennd.sandbox import (
    CommandSpec,
    Exited,
    LifecycleError,
    Output,
    Progress,
    ProtocolError,
    SandboxService,
    SandboxState,
    Started,
    b64decode,
)

_ID = {"type": "string", "pattern": "^sb-[0-9a-f]{12}$"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}
# How long a files or process call may take (seconds; default: the host's guest_timeout).
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


_NAME = {"type": "string", "minLength": 1, "maxLength": 64}
CREATE = {
    **_obj(
        [],
        image=_NAME,
        template=_NAME,
        vcpus={"type": "integer", "minimum": 1, "maximum": 32},
        memory_mib={"type": "integer", "minimum": 16, "maximum": 1 << 20},
        timeout_s={"type": ["number", "null"], "exclusiveMinimum": 0},
        env=_STR_MAP,
        metadata=_STR_MAP,
    ),
    "oneOf": [{"required": ["image"]}, {"required": ["template"]}],
}
IMAGE_REGISTER = _obj(["name", "path"], name=_NAME, path=_PATH)
PROCESS = _obj(
    ["id", "process"], id=_ID, process={"type": "string", "minLength": 1}, timeout=_TIMEOUT
)
SIGNAL = _obj(
    ["id", "process"],
    id=_ID,
    process={"type": "string", "minLength": 1},
    signal={"type": ["integer", "string"]},
    group={"type": "boolean"},
    timeout=_TIMEOUT,
)
TEMPLATE_CREATE = _obj(["name", "sandbox_id"], name=_NAME, sandbox_id=_ID)
BY_NAME = _obj(["name"], name=_NAME)
BY_ID = _obj(["id"], id=_ID)
PROCESS_LIST = _obj(["id"], id=_ID, timeout=_TIMEOUT)
LIST = _obj([], state={"enum": [s.value for s in SandboxState]}, metadata=_STR_MAP)
SET_TIMEOUT = _obj(["id", "timeout_s"], id=_ID, timeout_s={"type": ["number", "null"]})
EXEC = {
    **_obj(
        ["id"],
        id=_ID,
        argv={"type": "array", "items": {"type": "string"}, "minItems": 1},
        shell={"type": "string"},
        env=_STR_MAP,
        cwd=_PATH,
        user={"type": "string"},
        stdin={"type": "string", "description": "base64"},
        timeout={"type": "number", "exclusiveMinimum": 0},
        stream={"type": "boolean"},
    ),
    "oneOf": [{"required": ["argv"]}, {"required": ["shell"]}],
}
FILE = _obj(["id", "path"], id=_ID, path=_PATH, timeout=_TIMEOUT)
WRITE = _obj(
    ["id", "path", "data"],
    id=_ID,
    path=_PATH,
    data={"type": "string", "description": "base64"},
    mode={"type": "integer", "minimum": 0, "maximum": 0o7777},
    timeout=_TIMEOUT,
)
MKDIR = _obj(["id", "path"], id=_ID, path=_PATH, parents={"type": "boolean"}, timeout=_TIMEOUT)
REMOVE = _obj(["id", "path"], id=_ID, path=_PATH, recursive={"type": "boolean"}, timeout=_TIMEOUT)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Sandbox-layer errors as the API's typed errors, through the one code table."""
    try:
        yield
    except LifecycleError as e:
        raise rpc.from_code(e.code, str(e), e.data) from e


def _progress(ctx: CallContext) -> Progress:
    async def report(stage: str, done: int, total: int, **facts: int) -> None:
        await ctx.progress(stage=stage, done=done, total=total, **facts)

    return report


def _b64(text: str, field: str) -> bytes:
    try:
        return b64decode(text, field)
    except ProtocolError as e:
        raise rpc.InvalidParams(str(e), errors=[{"path": f"/{field}", "message": str(e)}]) from e


# The command fields of sandbox.exec and sandbox.process.start are CommandSpec's wire shape:
# one decoder (the guest protocol's) reads them on both sides of the agent.
_SPEC_FIELDS = ("argv", "shell", "env", "cwd", "user", "stdin", "timeout")


def _spec(params: dict[str, Any]) -> CommandSpec:
    try:
        return CommandSpec.from_json({k: params[k] for k in _SPEC_FIELDS if k in params})
    except ProtocolError as e:
        raise rpc.InvalidParams(str(e), errors=[{"path": "", "message": str(e)}]) from e


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


async def _exec_streamed(
    service: SandboxService, ctx: CallContext, sid: str, spec: CommandSpec
) -> dict[str, Any]:
    pid, exited = 0, None
    async with service.guest(sid, service.command_deadline(spec)) as guest:
        events = guest.exec(spec)
        try:
            async for event in events:
                if isinstance(event, Output):
                    await ctx.notify("stream", {"stream": event.stream, "data": _text(event.data)})
                elif isinstance(event, Started):
                    pid = event.pid
                elif isinstance(event, Exited):
                    exited = event
        finally:
            # Leaving early drops the connection: the agent kills the command.
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
    if exited is None:
        raise rpc.GuestFailure("the command's output ended without its exit status")
    return {"pid": pid, "code": exited.code, "signal": exited.signal, "timed_out": exited.timed_out}


def register(methods: MethodTable, service: SandboxService) -> None:
    _register_lifecycle(methods, service)
    _register_templates(methods, service)
    _register_images(methods, service)
    _register_processes(methods, service)
    _register_queries(methods, service)
    _register_files(methods, service)


def _register_lifecycle(methods: MethodTable, service: SandboxService) -> None:
    life = Kind.LIFECYCLE
    lifecycle = service.lifecycle

    @methods.register("sandbox.create", params=CREATE, kind=life, mutating=True)
    async def create(ctx: CallContext, p: dict[str, Any]) -> Any:
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
            )
        return views.sandbox(service, sb)

    @methods.register("sandbox.pause", params=BY_ID, kind=life, mutating=True)
    async def pause(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            return views.sandbox(service, await lifecycle.pause(p["id"], _progress(ctx)))

    @methods.register("sandbox.resume", params=BY_ID, kind=life, mutating=True)
    async def resume(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            return views.sandbox(service, await lifecycle.resume(p["id"], _progress(ctx)))

    @methods.register("sandbox.destroy", params=BY_ID, kind=life, mutating=True)
    async def destroy(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            await lifecycle.destroy(p["id"])
        return {"id": p["id"], "destroyed": True}

    @methods.register("sandbox.set_timeout", params=SET_TIMEOUT, mutating=True)
    async def set_timeout(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            return views.sandbox(service, await lifecycle.set_timeout(p["id"], p["timeout_s"]))


def _register_queries(methods: MethodTable, service: SandboxService) -> None:
    @methods.register("sandbox.get", params=BY_ID)
    async def get(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            sb = service.registry.get(p["id"])
            return {**views.sandbox(service, sb), "usage": await service.usage(sb)}

    @methods.register("sandbox.list", params=LIST)
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        return {"sandboxes": views.sandboxes(service, p.get("state"), p.get("metadata"))}

    @methods.register("sandbox.exec", params=EXEC, mutating=True)
    async def exec_(ctx: CallContext, p: dict[str, Any]) -> Any:
        spec = _spec(p)
        with _translated():
            if p.get("stream"):
                return await _exec_streamed(service, ctx, p["id"], spec)
            async with service.guest(p["id"], service.command_deadline(spec)) as guest:
                r = await guest.run(spec)
        return {
            "pid": r.pid,
            "code": r.code,
            "signal": r.signal,
            "timed_out": r.timed_out,
            "stdout": _text(r.stdout),
            "stderr": _text(r.stderr),
        }


def _register_files(methods: MethodTable, service: SandboxService) -> None:
    @methods.register("sandbox.files.read", params=FILE)
    async def read(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                data = await guest.read_bytes(p["path"])
        return {"path": p["path"], "size": len(data), "data": base64.b64encode(data).decode()}

    @methods.register("sandbox.files.write", params=WRITE, mutating=True)
    async def write(ctx: CallContext, p: dict[str, Any]) -> Any:
        data = _b64(p["data"], "data")
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                info = await guest.write_file(p["path"], data, mode=p.get("mode"))
        return info.to_json()

    @methods.register("sandbox.files.stat", params=FILE)
    async def stat(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                return (await guest.stat(p["path"])).to_json()

    @methods.register("sandbox.files.list", params=FILE)
    async def list_dir(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                entries = await guest.list_dir(p["path"])
        return {"entries": [e.to_json() for e in entries]}

    @methods.register("sandbox.files.mkdir", params=MKDIR, mutating=True)
    async def mkdir(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                created = await guest.mkdir(p["path"], parents=p.get("parents", True))
        return {"created": created}

    @methods.register("sandbox.files.remove", params=REMOVE, mutating=True)
    async def remove(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                await guest.remove(p["path"], recursive=p.get("recursive", False))
        return {"removed": True}


def _register_templates(methods: MethodTable, service: SandboxService) -> None:
    catalog = service.templates

    @methods.register("template.create", params=TEMPLATE_CREATE, kind=Kind.LIFECYCLE, mutating=True)
    async def create(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            meta = await catalog.create(p["sandbox_id"], p["name"], _progress(ctx))
        return views.template(meta, [])

    @methods.register("template.get", params=BY_NAME)
    async def get(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            meta = await catalog.get(p["name"])
        return views.template(meta, catalog.users(meta.name))

    @methods.register("template.list")
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            metas = await catalog.all()
        return {"templates": [views.template(m, catalog.users(m.name)) for m in metas]}

    @methods.register("template.delete", params=BY_NAME, kind=Kind.LIFECYCLE, mutating=True)
    async def delete(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            await catalog.delete(p["name"])
        return {"name": p["name"], "deleted": True}


def _register_images(methods: MethodTable, service: SandboxService) -> None:
    catalog = service.images

    @methods.register("image.register", params=IMAGE_REGISTER, kind=Kind.LIFECYCLE, mutating=True)
    async def register_(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            made = await catalog.register(p["name"], Path(p["path"]))
        return views.image(made, [])

    @methods.register("image.list")
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            found = await catalog.all()
        return {"images": [views.image(i, catalog.users(i.name)) for i in found]}

    @methods.register("image.delete", params=BY_NAME, kind=Kind.LIFECYCLE, mutating=True)
    async def delete(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            await catalog.delete(p["name"])
        return {"name": p["name"], "deleted": True}


def _register_processes(methods: MethodTable, service: SandboxService) -> None:
    """Background processes in the guest: they outlive the call that started them."""

    @methods.register("sandbox.process.start", params=EXEC, mutating=True)
    async def start(ctx: CallContext, p: dict[str, Any]) -> Any:
        spec = _spec(p)
        with _translated():
            async with service.guest(p["id"]) as guest:
                return (await guest.start(spec)).to_json()

    @methods.register("sandbox.process.list", params=PROCESS_LIST)
    async def list_(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                return {"processes": [x.to_json() for x in await guest.processes()]}

    @methods.register("sandbox.process.get", params=PROCESS)
    async def get(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                return (await guest.process(p["process"])).to_json()

    @methods.register("sandbox.process.signal", params=SIGNAL, mutating=True)
    async def signal(ctx: CallContext, p: dict[str, Any]) -> Any:
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                await guest.signal(p["process"], p.get("signal", 15), p.get("group", True))
        return {"signalled": True}

    @methods.register("sandbox.process.output", params=PROCESS)
    async def output(ctx: CallContext, p: dict[str, Any]) -> Any:
        """The retained output so far (stream notifications), then the process's state."""
        with _translated():
            async with service.guest(p["id"], p.get("timeout")) as guest:
                events = guest.attach(p["process"], follow=False)
                try:
                    async for event in events:
                        if isinstance(event, Output):
                            await ctx.notify(
                                "stream", {"stream": event.stream, "data": _text(event.data)}
                            )
                finally:
                    close = getattr(events, "aclose", None)
                    if close is not None:
                        await close()
                return (await guest.process(p["process"])).to_json()
