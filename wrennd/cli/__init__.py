# PYTHON_ARGCOMPLETE_OK
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
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import argcomplete

from wrennd import config
from wrennd.cli.commands import COMMANDS, Command
from wrennd.cli.exits import Exit, exit_for_code
from wrennd.cli.guest_commands import GUEST_COMMANDS
from wrennd.cli.render import Render, render_kv, write_bytes
from wrennd.rpc.client import Client, ClientError, DaemonNotRunning, PermissionDenied, RemoteError


class Progress:
    """Draws progress notifications on stderr and writes streamed output."""

    def __init__(self, err: TextIO, out: TextIO) -> None:
        self.err = err
        self.out = out
        self.tty = err.isatty()
        self.drawn = False

    def __call__(self, method: str, params: dict[str, Any]) -> None:
        if method == "stream":
            # Output is base64 (byte-exact): written to the matching stream as raw bytes.
            target = self.err if params.get("stream") == "stderr" else self.out
            write_bytes(target, base64.b64decode(str(params.get("data", ""))))
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


_GROUP_HELP = {
    "host": "the daemon and its host",
    "sandbox": "create, run, pause, resume, destroy sandboxes",
    "template": "named snapshots to clone sandboxes from",
    "image": "base images",
    "files": "files inside a sandbox",
}
EPILOG = """exit status: 0 ok; 1 failure; 2 usage; 3 daemon not running; 4 permission
denied on the socket; 5 connection lost; 6 bad request; 7 internal error;
8 shutting down; 10 sandbox not found; 11 wrong state; 12 template in use;
13 resource exhausted; 14 VMM failure; 15 guest failure; 16 not found;
17 image in use; 18 storage failure; 19 snapshot corrupt; 130 interrupted.
`sandbox exec` and `sandbox shell` exit with the remote command's status."""


def _json_flag(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--json", action="store_true", default=default, help="print the raw JSON result")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrennctl",
        description="Talk to the wrennd daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--socket", type=Path, help="API socket (default: run_dir/wrennd.sock)")
    _json_flag(parser, False)
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS + GUEST_COMMANDS:
        if len(command.words) == 1:
            p = sub.add_parser(command.words[0], help=command.help)
        else:
            group, name = command.words
            if group not in groups:
                help_ = _GROUP_HELP.get(group, f"{group}.* methods")
                groups[group] = sub.add_parser(group, help=help_).add_subparsers(
                    dest="name", required=True, metavar="SUBCOMMAND"
                )
            p = groups[group].add_parser(name, help=command.help)
        command.arguments(p)
        # Also after the subcommand; SUPPRESS keeps a --json given before it.
        _json_flag(p, argparse.SUPPRESS)
        p.set_defaults(command=command)
    call = sub.add_parser("call", help="call any method with JSON params")
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="JSON object or array")
    _json_flag(call, argparse.SUPPRESS)
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
        params = command.params(args) if command.run is None else None
        method, render = command.method, command.render
    client = await Client.connect(_socket_path(args))
    progress = Progress(err, out)
    try:
        if command is not None and command.run is not None:
            result = await command.run(args, client, out, err)
        else:
            result = await client.call(method, params, on_notification=progress)
    finally:
        progress.finish()
        await client.close()
    if args.json or (command is None and not isinstance(result, dict | list)):
        out.write(json.dumps(result, indent=2) + "\n")
    elif getattr(args, "quiet", False) and isinstance(result, dict):
        out.write(f"{result['id']}\n")
    else:
        render(result, out)
    if command is not None and command.exit_status is not None:
        return command.exit_status(result)
    return Exit.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
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
    except OSError as e:  # a local file of cp
        err.write(f"wrennctl: {e}\n")
        return Exit.FAILURE
