"""wrennctl's commands inside a sandbox: files, background processes, cp and the shell."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from wrennd.cli import cp, shell
from wrennd.cli.commands import Command, id_arg
from wrennd.cli.render import age, local_time, render_kv, render_nothing, render_table


def _path_args(p: argparse.ArgumentParser) -> None:
    id_arg(p)
    p.add_argument("path", help="absolute path inside the sandbox")


def _mkdir_args(p: argparse.ArgumentParser) -> None:
    _path_args(p)
    p.add_argument("--no-parents", action="store_true", help="fail if the parent is missing")


def _rm_args(p: argparse.ArgumentParser) -> None:
    _path_args(p)
    p.add_argument("-r", "--recursive", action="store_true", help="remove a directory tree")


def _mode(entry: dict[str, Any]) -> str:
    kind = {"dir": "d", "symlink": "l", "file": "-"}.get(entry["type"], "?")
    bits = entry["mode"] & 0o777
    return kind + "".join(ch if bits & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))


def render_ls(result: Any, out: TextIO) -> None:
    rows = [
        (
            _mode(e),
            str(e["size"]),
            local_time(e["mtime"]),
            e["name"] + (f" -> {e['target']}" if e.get("target") else ""),
        )
        for e in result["entries"]
    ]
    render_table(rows, out, header=("MODE", "SIZE", "MODIFIED", "NAME"))


def render_stat(result: Any, out: TextIO) -> None:
    render_kv({**result, "mode": f"{_mode(result)} ({result['mode'] & 0o7777:o})"}, out)


def render_ps(result: Any, out: TextIO) -> None:
    rows = [
        (
            p["id"],
            str(p["pid"]),
            "running" if p["running"] else "exited",
            "" if p["code"] is None else str(p["code"]),
            "" if p["signal"] is None else str(p["signal"]),
            age(p["started_at"]),
            " ".join(p["command"]),
        )
        for p in result["processes"]
    ]
    render_table(rows, out, header=("PROC", "PID", "STATE", "CODE", "SIGNAL", "STARTED", "COMMAND"))


def _proc_args(p: argparse.ArgumentParser) -> None:
    id_arg(p)
    p.add_argument("proc", help="background process id (from ps or start)")


def _kill_args(p: argparse.ArgumentParser) -> None:
    _proc_args(p)
    p.add_argument("signal", nargs="?", default="TERM", help="name or number (default TERM)")


def _logs_args(p: argparse.ArgumentParser) -> None:
    _proc_args(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it exits")


def _start_args(p: argparse.ArgumentParser) -> None:
    id_arg(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")


def _start_params(a: argparse.Namespace) -> dict[str, Any]:
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        raise argparse.ArgumentTypeError("start: give the command after --")
    return {"id": a.id, "argv": argv}


def _signal(text: str) -> int | str:
    return int(text) if text.isdigit() else text


GUEST_COMMANDS: list[Command] = [
    Command(
        ("files", "ls"),
        "sandbox.files.list",
        "list a directory",
        render_ls,
        params=lambda a: {"id": a.id, "path": a.path},
        arguments=_path_args,
    ),
    Command(
        ("files", "stat"),
        "sandbox.files.stat",
        "describe a file (lstat)",
        render_stat,
        params=lambda a: {"id": a.id, "path": a.path},
        arguments=_path_args,
    ),
    Command(
        ("files", "mkdir"),
        "sandbox.files.mkdir",
        "make a directory (with parents)",
        params=lambda a: {"id": a.id, "path": a.path, "parents": not a.no_parents},
        arguments=_mkdir_args,
    ),
    Command(
        ("files", "rm"),
        "sandbox.files.remove",
        "remove a file or (-r) a tree",
        params=lambda a: {"id": a.id, "path": a.path, "recursive": a.recursive},
        arguments=_rm_args,
    ),
    Command(
        ("cp",),
        "sandbox.files.upload",
        "copy files: SRC DST, one of them SANDBOX_ID:/path",
        cp.render,
        arguments=cp.arguments,
        run=cp.run,
    ),
    Command(
        ("start",),
        "sandbox.process.start",
        "start a background process: ID -- CMD...",
        params=_start_params,
        arguments=_start_args,
    ),
    Command(
        ("ps",),
        "sandbox.process.list",
        "background processes of a sandbox",
        render_ps,
        params=lambda a: {"id": a.id},
        arguments=id_arg,
    ),
    Command(
        ("kill",),
        "sandbox.process.signal",
        "signal a background process: ID PROC [SIG]",
        params=lambda a: {"id": a.id, "process": a.proc, "signal": _signal(a.signal)},
        arguments=_kill_args,
    ),
    Command(
        ("logs",),
        "sandbox.process.output",
        "a background process's output (-f: follow)",
        render_nothing,
        params=lambda a: {"id": a.id, "process": a.proc, "follow": a.follow},
        arguments=_logs_args,
    ),
    Command(
        ("sandbox", "shell"),
        "sandbox.exec",
        "an interactive shell on a terminal",
        render_nothing,
        arguments=shell.arguments,
        run=shell.run,
        exit_status=lambda r: int(r["code"]) if r.get("code") is not None else 1,
    ),
]
