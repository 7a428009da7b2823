"""How wrennctl shows results: tables, key/value lists, file contents."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

Render = Callable[[Any, TextIO], None]


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
        (s["id"], s["state"], s.get("image") or "", str(s["memory_mib"]), s.get("error") or "")
        for s in result["sandboxes"]
    ]
    render_table(rows, out, header=("ID", "STATE", "IMAGE", "MEMORY_MIB", "ERROR"))


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
