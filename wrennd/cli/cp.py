"""``wrennctl cp SRC DST``: files and directories between the host and a sandbox, as docker cp.

One side is ``SANDBOX_ID:PATH`` (absolute guest path), the other a host path.
A directory needs ``-r``; copied onto an existing directory, SRC goes inside
it under its own name.  On a terminal a progress bar is drawn on stderr and
cleared before the result is printed.
"""

# A one-shot command line tool: local stat/walk calls on its loop block nobody else.
# ruff: noqa: ASYNC240

from __future__ import annotations

import argparse
import os
import posixpath
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from wrennd.rpc.client import Client, RemoteError
from wrennd.sdk import transfer

_REMOTE = re.compile(r"^(sb-[0-9a-f]{12}):(/.*)$")


@dataclass(frozen=True)
class Remote:
    sandbox: str
    path: str


def parse_side(text: str) -> Remote | Path:
    m = _REMOTE.match(text)
    if m:
        return Remote(m.group(1), posixpath.normpath(m.group(2)))
    if re.match(r"^sb-[^:/]*:", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SANDBOX_ID:/absolute/path")
    return Path(text)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Bar:
    """A one-line progress bar on a terminal's stderr (nothing elsewhere)."""

    def __init__(self, err: TextIO, label: str, total: int | None) -> None:
        self.err = err
        self.tty = err.isatty()
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.1 and done != (total or self.total)):
            return
        self.last = now
        total = total or self.total
        rate = done / max(now - self.start, 1e-6)
        width = max(10, min(40, os.get_terminal_size(self.err.fileno()).columns - 60))
        if total:
            filled = int(width * done / total)
            bar = "[" + "#" * filled + " " * (width - filled) + f"] {100 * done // total:3d}%"
        else:
            bar = ""
        text = f"{self.label[:30]} {bar} {_size(done)} {_size(rate)}/s"
        self.err.write("\r\033[K" + text)
        self.err.flush()

    def clear(self) -> None:
        if self.tty:
            self.err.write("\r\033[K")
            self.err.flush()


async def _remote_stat(client: Client, side: Remote) -> dict[str, Any] | None:
    try:
        return dict(
            await client.call("sandbox.files.stat", {"id": side.sandbox, "path": side.path})
        )
    except RemoteError as e:
        if e.data.get("code") == "ENOENT":
            return None
        raise


async def _upload_file(
    client: Client, src: Path, dst: Remote, err: TextIO, mode: int
) -> dict[str, Any]:
    bar = Bar(err, src.name, src.stat().st_size)
    try:
        got = await transfer.upload(
            client,
            dst.sandbox,
            dst.path,
            transfer.file_chunks(src),
            mode=mode,
            total=src.stat().st_size,
            progress=bar,
        )
    finally:
        bar.clear()
    return {"source": str(src), "destination": f"{dst.sandbox}:{dst.path}", **got}


async def upload(
    client: Client, src: Path, dst: Remote, recursive: bool, err: TextIO
) -> list[dict[str, Any]]:
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    target = await _remote_stat(client, dst)
    if target is not None and target["type"] == "dir":
        dst = Remote(dst.sandbox, posixpath.join(dst.path, src.resolve().name))
    if not src.is_dir():
        return [await _upload_file(client, src, dst, err, src.stat().st_mode & 0o7777)]
    if not recursive:
        raise IsADirectoryError(f"{src} is a directory (use -r)")
    done = []
    for here, dirs, files in os.walk(src):
        rel = os.path.relpath(here, src)
        base = dst.path if rel == "." else posixpath.join(dst.path, rel)
        await client.call("sandbox.files.mkdir", {"id": dst.sandbox, "path": base})
        dirs.sort()
        for name in sorted(files):
            local = Path(here, name)
            if local.is_file():
                remote = Remote(dst.sandbox, posixpath.join(base, name))
                done.append(
                    await _upload_file(client, local, remote, err, local.stat().st_mode & 0o7777)
                )
    return done


async def _download_file(
    client: Client, src: Remote, dst: Path, err: TextIO, size: int, mode: int
) -> dict[str, Any]:
    bar = Bar(err, posixpath.basename(src.path), size)
    try:
        got = await transfer.download(client, src.sandbox, src.path, dst, mode=mode, progress=bar)
    finally:
        bar.clear()
    return {"source": f"{src.sandbox}:{src.path}", "destination": str(dst), **got}


async def download(
    client: Client, src: Remote, dst: Path, recursive: bool, err: TextIO
) -> list[dict[str, Any]]:
    info = await _remote_stat(client, src)
    if info is None:
        raise FileNotFoundError(f"{src.sandbox}:{src.path}: no such file or directory")
    if dst.is_dir():
        dst = dst / posixpath.basename(src.path.rstrip("/") or "root")
    if info["type"] != "dir":
        return [await _download_file(client, src, dst, err, info["size"], info["mode"] & 0o777)]
    if not recursive:
        raise IsADirectoryError(f"{src.sandbox}:{src.path} is a directory (use -r)")
    dst.mkdir(exist_ok=True)
    done = []
    listing = await client.call("sandbox.files.list", {"id": src.sandbox, "path": src.path})
    for entry in listing["entries"]:
        child = Remote(src.sandbox, posixpath.join(src.path, entry["name"]))
        if entry["type"] == "dir":
            done += await download(client, child, dst / entry["name"], True, err)
        elif entry["type"] == "file":
            local = dst / entry["name"]
            done.append(
                await _download_file(
                    client, child, local, err, entry["size"], entry["mode"] & 0o777
                )
            )
    return done


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="host path or SANDBOX_ID:/path")
    p.add_argument("dst", help="host path or SANDBOX_ID:/path")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")


async def run(args: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> Any:
    src, dst = parse_side(args.src), parse_side(args.dst)
    if isinstance(src, Remote) == isinstance(dst, Remote):
        raise argparse.ArgumentTypeError("cp: exactly one side must be SANDBOX_ID:/path")
    if isinstance(dst, Remote):
        assert isinstance(src, Path)
        copied = await upload(client, src, dst, args.recursive, err)
    else:
        assert isinstance(src, Remote)
        copied = await download(client, src, dst, args.recursive, err)
    return {"copied": copied}


def render(result: Any, out: TextIO) -> None:
    for item in result["copied"]:
        out.write(
            f"{item['source']} -> {item['destination']}  {item['size']} bytes"
            f"  sha256 {item['sha256']}\n"
        )
