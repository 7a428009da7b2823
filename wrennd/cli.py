"""wrennctl: the command-line client of wrennd.

Subcommands mirror the daemon's methods (``wrennctl host info`` calls
``host.info``); ``wrennctl call METHOD [PARAMS]`` reaches any method.  Output
is a human table by default, ``--json`` for scripts.  While a call runs,
``progress`` notifications are drawn on stderr and ``stream`` notifications
(``{"stream": "stdout"|"stderr", "data": ...}``) are written to the matching
output.  Each error class has its own exit status (see EXIT_CODES).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import enum
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from wrennd import config
from wrennd.rpc import errors
from wrennd.rpc.client import Client, ClientError, DaemonNotRunning, PermissionDenied, RemoteError

Render = Callable[[Any, TextIO], None]


class Exit(enum.IntEnum):
    """wrennctl's exit status, one per error class (``exec`` exits with the remote code)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_RUNNING = 3
    PERMISSION = 4
    CONNECTION = 5
    BAD_REQUEST = 6
    INTERNAL = 7
    SHUTTING_DOWN = 8
    SANDBOX_NOT_FOUND = 10
    WRONG_STATE = 11
    TEMPLATE_IN_USE = 12
    RESOURCE_EXHAUSTED = 13
    VMM_FAILURE = 14
    GUEST_FAILURE = 15
    NOT_FOUND = 16
    INTERRUPTED = 130


_EXIT_FOR_CODE = {
    errors.PARSE_ERROR: Exit.BAD_REQUEST,
    errors.INVALID_REQUEST: Exit.BAD_REQUEST,
    errors.METHOD_NOT_FOUND: Exit.BAD_REQUEST,
    errors.INVALID_PARAMS: Exit.BAD_REQUEST,
    errors.MESSAGE_TOO_LARGE: Exit.BAD_REQUEST,
    errors.INTERNAL_ERROR: Exit.INTERNAL,
    errors.SHUTTING_DOWN: Exit.SHUTTING_DOWN,
    errors.SANDBOX_NOT_FOUND: Exit.SANDBOX_NOT_FOUND,
    errors.WRONG_STATE: Exit.WRONG_STATE,
    errors.TEMPLATE_IN_USE: Exit.TEMPLATE_IN_USE,
    errors.RESOURCE_EXHAUSTED: Exit.RESOURCE_EXHAUSTED,
    errors.VMM_FAILURE: Exit.VMM_FAILURE,
    errors.GUEST_FAILURE: Exit.GUEST_FAILURE,
    errors.NOT_FOUND: Exit.NOT_FOUND,
}


def exit_for_code(code: int) -> Exit:
    return _EXIT_FOR_CODE.get(code, Exit.FAILURE)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list):
        shown = (
            ", ".join(str(v) for v in value)
            if all(not isinstance(v, dict | list) for v in value)
            else json.dumps(value)
        )
        return [(prefix, shown)]
    return [(prefix, "" if value is None else str(value))]


def render_table(rows: Sequence[Sequence[str]], out: TextIO, header: Sequence[str] = ()) -> None:
    all_rows = [list(header), *map(list, rows)] if header else [list(r) for r in rows]
    if not all_rows:
        return
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    for row in all_rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def render_nothing(result: Any, out: TextIO) -> None:
    """For commands whose output was streamed while they ran."""


def render_kv(result: Any, out: TextIO) -> None:
    render_table(_flatten(result), out)


def render_info(result: Any, out: TextIO) -> None:
    rest = {k: v for k, v in result.items() if k != "features"}
    render_kv(rest, out)
    out.write("\n")
    rows = [
        (name, "yes" if f["available"] else "no", f.get("reason", ""))
        for name, f in result.get("features", {}).items()
    ]
    render_table(rows, out, header=("FEATURE", "AVAILABLE", "REASON"))


def render_methods(result: Any, out: TextIO) -> None:
    rows = [(m["name"], m["kind"], "yes" if m["mutating"] else "no", m["doc"]) for m in result]
    render_table(rows, out, header=("METHOD", "KIND", "MUTATING", "DESCRIPTION"))


@dataclass(frozen=True)
class Command:
    """One subcommand: the words that name it, its method, and how to show the answer."""

    words: tuple[str, ...]
    method: str
    help: str
    render: Render = render_kv
    params: Callable[[argparse.Namespace], dict[str, Any] | None] = lambda _: None
    arguments: Callable[[argparse.ArgumentParser], None] = lambda _: None
    # The exit status taken from the result (exec: the remote command's exit code).
    exit_status: Callable[[Any], int] | None = None


def _stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lag-window", type=float, help="event-loop lag over the last N seconds")


COMMANDS: list[Command] = [
    Command(("host", "info"), "host.info", "versions, features, configuration", render_info),
    Command(
        ("host", "stats"),
        "host.stats",
        "resource use and counters",
        params=lambda a: {"lag_window_s": a.lag_window} if a.lag_window else None,
        arguments=_stats_args,
    ),
    Command(("host", "methods"), "host.methods", "the methods the daemon answers", render_methods),
]


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image name (state_dir/images/NAME.ext4)")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--memory-mib", type=int, default=128)
    p.add_argument("--timeout", type=float, help="seconds until the timeout action (ttl_action)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE")


def _create_params(a: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"image": a.image, "vcpus": a.vcpus, "memory_mib": a.memory_mib}
    if a.timeout is not None:
        params["timeout_s"] = a.timeout
    params["env"] = _pairs(a.env, "--env")
    params["metadata"] = _pairs(a.meta, "--meta")
    return params


def _id_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="sandbox id (sb-...)")


def _path_args(p: argparse.ArgumentParser) -> None:
    _id_arg(p)
    p.add_argument("path", help="absolute path inside the sandbox")


def _write_args(p: argparse.ArgumentParser) -> None:
    _path_args(p)
    p.add_argument("--data", help="the content (default: read from stdin)")


def _write_params(a: argparse.Namespace) -> dict[str, Any]:
    data = a.data.encode() if a.data is not None else sys.stdin.buffer.read()
    return {"id": a.id, "path": a.path, "data": base64.b64encode(data).decode()}


def _exec_args(p: argparse.ArgumentParser) -> None:
    _id_arg(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")


def _exec_params(a: argparse.Namespace) -> dict[str, Any]:
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        raise argparse.ArgumentTypeError("exec: give the command after --")
    return {"id": a.id, "argv": argv, "stream": True}


def _timeout_args(p: argparse.ArgumentParser) -> None:
    _id_arg(p)
    p.add_argument("seconds", help="seconds from now, or 'none'")


def render_file(result: Any, out: TextIO) -> None:
    data = base64.b64decode(result["data"])
    if hasattr(out, "buffer"):
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
    else:
        out.write(data.decode("utf-8", "replace"))


def render_sandboxes(result: Any, out: TextIO) -> None:
    rows = [
        (s["id"], s["state"], s.get("image") or "", str(s["memory_mib"]), s.get("error") or "")
        for s in result["sandboxes"]
    ]
    render_table(rows, out, header=("ID", "STATE", "IMAGE", "MEMORY_MIB", "ERROR"))


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", help="only sandboxes in this state")


def _by_id(a: argparse.Namespace) -> dict[str, Any]:
    return {"id": a.id}


def _path_params(a: argparse.Namespace) -> dict[str, Any]:
    return {"id": a.id, "path": a.path}


SANDBOX_COMMANDS: list[Command] = [
    Command(
        ("sandbox", "create"),
        "sandbox.create",
        "create a sandbox from an image",
        params=_create_params,
        arguments=_create_args,
    ),
    Command(
        ("sandbox", "list"),
        "sandbox.list",
        "every sandbox",
        render_sandboxes,
        params=lambda a: {"state": a.state} if a.state else {},
        arguments=_list_args,
    ),
    Command(("sandbox", "get"), "sandbox.get", "one sandbox", params=_by_id, arguments=_id_arg),
    Command(
        ("sandbox", "destroy"),
        "sandbox.destroy",
        "destroy a sandbox",
        params=_by_id,
        arguments=_id_arg,
    ),
    Command(
        ("sandbox", "pause"),
        "sandbox.pause",
        "pause into a snapshot",
        params=_by_id,
        arguments=_id_arg,
    ),
    Command(
        ("sandbox", "resume"),
        "sandbox.resume",
        "resume from its snapshot",
        params=_by_id,
        arguments=_id_arg,
    ),
    Command(
        ("sandbox", "exec"),
        "sandbox.exec",
        "run a command (output streamed)",
        render_nothing,
        params=_exec_params,
        arguments=_exec_args,
        exit_status=lambda r: int(r["code"]) if r.get("code") is not None else Exit.FAILURE,
    ),
    Command(
        ("sandbox", "read"),
        "sandbox.files.read",
        "print a file",
        render_file,
        params=_path_params,
        arguments=_path_args,
    ),
    Command(
        ("sandbox", "write"),
        "sandbox.files.write",
        "write a file (stdin or --data)",
        params=_write_params,
        arguments=_write_args,
    ),
    Command(
        ("sandbox", "set-timeout"),
        "sandbox.set_timeout",
        "set or clear the timeout",
        params=lambda a: {
            "id": a.id,
            "timeout_s": None if a.seconds == "none" else float(a.seconds),
        },
        arguments=_timeout_args,
    ),
]


def _template_create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="template name")
    p.add_argument("sandbox", help="the running or paused sandbox to take it from")


def _name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="template name")


def _clone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("template", help="template name")
    p.add_argument("--timeout", type=float, help="seconds until the timeout action")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE")


def _clone_params(a: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"template": a.template, "metadata": _pairs(a.meta, "--meta")}
    if a.timeout is not None:
        params["timeout_s"] = a.timeout
    return params


def render_templates(result: Any, out: TextIO) -> None:
    rows = [
        (t["name"], str(t["vcpus"]), str(t["memory_mib"]), str(len(t["sandboxes"])))
        for t in result["templates"]
    ]
    render_table(rows, out, header=("NAME", "VCPUS", "MEMORY_MIB", "SANDBOXES"))


TEMPLATE_COMMANDS: list[Command] = [
    Command(
        ("template", "create"),
        "template.create",
        "take a template from a sandbox",
        params=lambda a: {"name": a.name, "sandbox_id": a.sandbox},
        arguments=_template_create_args,
    ),
    Command(("template", "list"), "template.list", "every template", render_templates),
    Command(
        ("template", "get"),
        "template.get",
        "one template",
        params=lambda a: {"name": a.name},
        arguments=_name_arg,
    ),
    Command(
        ("template", "delete"),
        "template.delete",
        "delete a template nobody uses",
        params=lambda a: {"name": a.name},
        arguments=_name_arg,
    ),
    Command(
        ("sandbox", "clone"),
        "sandbox.create",
        "create a sandbox from a template",
        params=_clone_params,
        arguments=_clone_args,
    ),
]


def _register_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="image name (state_dir/images/NAME.ext4)")
    p.add_argument("path", help="an ext4 image file on this host")


def render_images(result: Any, out: TextIO) -> None:
    rows = [
        (i["name"], str(i["size_bytes"]), str(i["allocated_bytes"]), str(len(i["used_by"])))
        for i in result["images"]
    ]
    render_table(rows, out, header=("NAME", "SIZE", "ALLOCATED", "SANDBOXES"))


IMAGE_COMMANDS: list[Command] = [
    Command(("image", "list"), "image.list", "registered images", render_images),
    Command(
        ("image", "register"),
        "image.register",
        "register an ext4 image",
        params=lambda a: {"name": a.name, "path": str(Path(a.path).resolve())},
        arguments=_register_args,
    ),
    Command(
        ("image", "delete"),
        "image.delete",
        "delete an image nobody uses",
        params=lambda a: {"name": a.name},
        arguments=_name_arg,
    ),
]
COMMANDS += SANDBOX_COMMANDS + TEMPLATE_COMMANDS + IMAGE_COMMANDS


class Progress:
    """Draws progress notifications on stderr and writes streamed output."""

    def __init__(self, err: TextIO, out: TextIO) -> None:
        self.err = err
        self.out = out
        self.tty = err.isatty()
        self.drawn = False

    def __call__(self, method: str, params: dict[str, Any]) -> None:
        if method == "stream":
            target = self.err if params.get("stream") == "stderr" else self.out
            target.write(str(params.get("data", "")))
            target.flush()
        elif method == "progress":
            self._draw(params)

    def _draw(self, params: dict[str, Any]) -> None:
        parts = [str(params.get("stage", ""))]
        if "done" in params and "total" in params:
            parts.append(f"{params['done']}/{params['total']}")
        if params.get("message"):
            parts.append(str(params["message"]))
        line = " ".join(p for p in parts if p)
        if self.tty:
            self.err.write(f"\r\033[K{line}")
            self.drawn = True
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def finish(self) -> None:
        if self.drawn:
            self.err.write("\r\033[K")
            self.err.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrennctl", description="Talk to the wrennd daemon.")
    parser.add_argument("--socket", type=Path, help="API socket (default: run_dir/wrennd.sock)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        group, name = command.words
        if group not in groups:
            groups[group] = sub.add_parser(group, help=f"{group}.* methods").add_subparsers(
                dest="name", required=True, metavar="SUBCOMMAND"
            )
        p = groups[group].add_parser(name, help=command.help)
        command.arguments(p)
        p.set_defaults(command=command)
    call = sub.add_parser("call", help="call any method with JSON params")
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="JSON object or array")
    call.set_defaults(command=None)
    return parser


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    if os.environ.get("WRENND_SOCKET"):
        return Path(os.environ["WRENND_SOCKET"])
    return config.load().socket_path


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    command: Command | None = args.command
    if command is None:
        method = args.method
        params = json.loads(args.params) if args.params else None
        render: Render = render_kv
    else:
        method, params, render = command.method, command.params(args), command.render
    client = await Client.connect(_socket_path(args))
    progress = Progress(err, out)
    try:
        result = await client.call(method, params, on_notification=progress)
    finally:
        progress.finish()
        await client.close()
    if args.json or (command is None and not isinstance(result, dict | list)):
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        render(result, out)
    if command is not None and command.exit_status is not None:
        return command.exit_status(result)
    return Exit.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        return asyncio.run(_run(args, out, err))
    except json.JSONDecodeError as e:
        err.write(f"wrennctl: params are not valid JSON: {e}\n")
        return Exit.USAGE
    except (argparse.ArgumentTypeError, ValueError) as e:
        err.write(f"wrennctl: {e}\n")
        return Exit.USAGE
    except config.ConfigError as e:
        err.write(f"wrennctl: {e}\n")
        return Exit.USAGE
    except DaemonNotRunning as e:
        err.write(f"wrennctl: {e}\n")
        return Exit.NOT_RUNNING
    except PermissionDenied as e:
        err.write(f"wrennctl: {e}\n")
        return Exit.PERMISSION
    except ClientError as e:
        err.write(f"wrennctl: {e}\n")
        return Exit.CONNECTION
    except RemoteError as e:
        if args.json:
            err.write(json.dumps({"code": e.code, "message": e.message, "data": e.data}) + "\n")
        else:
            details = ", ".join(f"{k}={v}" for k, v in e.data.items() if k != "type")
            err.write(f"wrennctl: {e.message}" + (f" ({details})" if details else "") + "\n")
        return exit_for_code(e.code)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
