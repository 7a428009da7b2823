"""wrennctl's subcommands: the words that name each, its method, params and rendering."""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from wrennd.cli.exits import Exit
from wrennd.cli.render import (
    Render,
    render_file,
    render_images,
    render_info,
    render_kv,
    render_methods,
    render_nothing,
    render_sandboxes,
    render_templates,
)


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
    # Commands made of several calls (cp, shell) run here instead of one ``method`` call.
    run: Callable[[argparse.Namespace, Any, TextIO, TextIO], Awaitable[Any]] | None = None


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
    Command(
        ("host", "restart"),
        "host.restart",
        "stop the daemon, leaving sandboxes running for the next one to adopt",
    ),
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
    p.add_argument(
        "--memory-backing", choices=("4k", "2m"), help="2m: 2 MiB huge pages (memory-mib even)"
    )
    p.add_argument("--timeout", type=float, help="seconds until the timeout action (ttl_action)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE")
    _quiet_arg(p)


def _quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new sandbox's id")


def _create_params(a: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"image": a.image, "vcpus": a.vcpus, "memory_mib": a.memory_mib}
    if a.timeout is not None:
        params["timeout_s"] = a.timeout
    if a.memory_backing is not None:
        params["memory_backing"] = a.memory_backing
    params["env"] = _pairs(a.env, "--env")
    params["metadata"] = _pairs(a.meta, "--meta")
    return params


def id_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="sandbox id (sb-...)")


_id_arg = id_arg


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
    _quiet_arg(p)


def _clone_params(a: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"template": a.template, "metadata": _pairs(a.meta, "--meta")}
    if a.timeout is not None:
        params["timeout_s"] = a.timeout
    return params


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
