"""How wrennctl shows results: tables, key/value lists, file contents."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

Render = Callable[[Any, TextIO], None]


def local_time(epoch: float | None) -> str:
    """An epoch time as local ISO 8601 to the second (``--json`` keeps the raw number)."""
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def age(epoch: float | None, now: float | None = None) -> str:
    """How long ago: ``45s ago``, ``3m ago``, ``2h ago``, ``5d ago`` (``in 3m`` ahead)."""
    if epoch is None:
        return ""
    delta = (time.time() if now is None else now) - epoch
    ahead, delta = delta < 0, abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            text = f"{int(delta // size)}{unit}"
            break
    else:
        text = f"{int(delta)}s"
    return f"in {text}" if ahead else f"{text} ago"


def _is_time(key: str, value: Any) -> bool:
    last = key.rsplit(".", 1)[-1]
    return (last.endswith("_at") or last == "mtime") and isinstance(value, int | float)


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
    if _is_time(prefix, value):
        return [(prefix, local_time(value))]
    return [(prefix, "" if value is None else str(value))]


def _width(out: TextIO) -> int | None:
    """The terminal's width when ``out`` is one; None (no limit) for pipes and files."""
    try:
        return shutil.get_terminal_size().columns if out.isatty() else None
    except (AttributeError, ValueError, OSError):
        return None


def render_table(rows: Sequence[Sequence[str]], out: TextIO, header: Sequence[str] = ()) -> None:
    """Aligned columns; on a terminal the last column is cut to fit its width."""
    all_rows = [list(header), *map(list, rows)] if header else [list(r) for r in rows]
    if not all_rows:
        return
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    limit = _width(out)
    for row in all_rows:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        if limit is not None and len(line) > limit:
            line = line[: max(limit - 1, 1)] + "…"
        out.write(line + "\n")


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


def write_bytes(out: TextIO, data: bytes) -> None:
    """Bytes to a text stream: raw when it has a binary buffer (a real file or terminal)."""
    if hasattr(out, "buffer"):
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
    else:
        out.write(data.decode("utf-8", "replace"))
        out.flush()


def render_file(result: Any, out: TextIO) -> None:
    write_bytes(out, base64.b64decode(result["data"]))


def render_sandboxes(result: Any, out: TextIO) -> None:
    rows = [
        (
            s["id"],
            s["state"],
            s.get("image") or s.get("template") or "",
            str(s["memory_mib"]),
            age(s.get("created_at")),
            s.get("error") or "",
        )
        for s in result["sandboxes"]
    ]
    render_table(rows, out, header=("ID", "STATE", "FROM", "MEMORY_MIB", "CREATED", "ERROR"))


def render_templates(result: Any, out: TextIO) -> None:
    rows = [
        (t["name"], str(t["vcpus"]), str(t["memory_mib"]), str(len(t["sandboxes"])))
        for t in result["templates"]
    ]
    render_table(rows, out, header=("NAME", "VCPUS", "MEMORY_MIB", "SANDBOXES"))


def render_images(result: Any, out: TextIO) -> None:
    rows = [
        (i["name"], str(i["size_bytes"]), str(i["allocated_bytes"]), str(len(i["used_by"])))
        for i in result["images"]
    ]
    render_table(rows, out, header=("NAME", "SIZE", "ALLOCATED", "SANDBOXES"))
