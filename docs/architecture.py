#!/usr/bin/env python3
"""Draw the architecture from the code: docs/architecture.dot, rendered to .svg by graphviz.

The processes (what runs where) are fixed here; the package graph is read from
the imports of every module under wrennd/ and wrennd_sim/, so the picture
cannot drift from the code (tests/unit/test_architecture.py checks it).

    python docs/architecture.py           write architecture.dot and architecture.svg
    python docs/architecture.py --check   exit 1 when the committed .dot is not the code's
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOT = REPO / "docs" / "architecture.dot"
SVG = REPO / "docs" / "architecture.svg"
# Top-level modules every package may use; edges to them would only add noise.
SHARED = {"wrennd.config", "wrennd.log", "wrennd.durable", "wrennd.features", "wrennd.metrics"}

PROCESSES = """\
  subgraph cluster_processes {
    label="processes"; style=rounded; color=gray40;
    client [label="wrennctl / SDK / console", shape=box];
    daemon [label="wrennd (asyncio, uvloop)\\nJSON-RPC on run_dir/wrennd.sock", shape=box];
    engine [label="UFFD engine threads (C)\\none per restored VM", shape=box];
    vmm [label="firecracker or fcsim\\none per sandbox, own netns", shape=box];
    agent [label="guest agent :49983\\ninside the VM", shape=box];
    files [label="state_dir: records, layers,\\nmemfiles (generations), headers", shape=cylinder];
    client -> daemon [label="JSON-RPC"];
    daemon -> vmm [label="HTTP API (unix socket)"];
    daemon -> agent [label="HTTP via TAP/veth/NAT"];
    vmm -> engine [label="uffd + regions (SCM_RIGHTS)"];
    engine -> files [label="resume: pages from\\nthe snapshot chain"];
    vmm -> files [label="pause: vmstate +\\nFull/Diff memfile"];
    daemon -> files [label="ingest, collapse"];
  }
"""


def node_of(module: str) -> str | None:
    """The picture's node for a module: its package (wrennd.sandbox), or the module itself
    for top-level modules of wrennd; None for shared helpers and outside code."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1].startswith("__"):
        return None  # from wrennd import __version__
    if parts[0] not in ("wrennd", "wrennd_sim") or len(parts) == 1:
        return None
    node = ".".join(parts[:2])
    return None if node in SHARED else node


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def edges() -> set[tuple[str, str]]:
    out = set()
    for top in ("wrennd", "wrennd_sim"):
        for path in sorted((REPO / top).rglob("*.py")):
            mod = module_name(path)
            src = node_of(mod)
            for target in imported(path, mod):
                dst = node_of(target)
                if src and dst and dst != src:
                    out.add((src, dst))
    return out


def dot() -> str:
    es = sorted(edges())
    nodes = sorted({n for e in es for n in e})
    lines = ["digraph wrennd {", "  rankdir=LR; fontname=Helvetica;", PROCESSES.rstrip()]
    for cluster, prefix, label in (
        ("daemon", "wrennd.", "the daemon's packages (wrennd)"),
        ("sim", "wrennd_sim.", "simulator and test support (wrennd_sim)"),
    ):
        lines.append(f'  subgraph cluster_{cluster} {{ label="{label}"; style=rounded;')
        lines += [f'    "{n}";' for n in nodes if n.startswith(prefix)]
        lines.append("  }")
    lines += [f'  "{a}" -> "{b}";' for a, b in es]
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = dot()
    if "--check" in argv:
        if DOT.read_text() != text:
            print("docs/architecture.dot is out of date: run python docs/architecture.py")
            return 1
        return 0
    DOT.write_text(text)
    if shutil.which("dot") is None:
        print("graphviz (dot) is missing: wrote the .dot only (make install installs it)")
        return 1
    subprocess.run(["dot", "-Tsvg", str(DOT), "-o", str(SVG)], check=True)
    print(f"wrote {DOT.relative_to(REPO)} and {SVG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
