"""The guest agent's files, laid out as the image carries them.

The image (images/build-image) and the agent tests both stage the agent with
``stage(dest)``: ``dest/wrennd/__init__.py`` (empty), ``dest/wrennd/durable.py``
and the guest-side modules under ``dest/wrennd/guest/``.  With ``dest`` on PYTHONPATH, ``python3 -m
wrennd.guest.agent`` runs exactly what a guest runs, unable to import anything
else of wrennd.  Standard library only: the build script runs it with the host's
python3.

    python3 -m wrennd.guest.bundle DEST
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

GUEST_MODULES = (
    "__init__.py",
    "protocol.py",
    "agent_fs.py",
    "agent_proc.py",
    "agent_session.py",
    "agent.py",
)
SOURCE = Path(__file__).resolve().parent


def stage(dest: Path) -> list[Path]:
    """Copy the guest modules under ``dest``; returns the files written."""
    pkg = dest / "wrennd" / "guest"
    pkg.mkdir(parents=True, exist_ok=True)
    top = dest / "wrennd" / "__init__.py"
    top.write_text('"""wrennd guest agent files (see wrennd.guest.bundle)."""\n')
    written = [top]
    # The agent writes files the way the daemon does (wrennd.durable, stdlib only).
    shutil.copyfile(SOURCE.parent / "durable.py", dest / "wrennd" / "durable.py")
    written.append(dest / "wrennd" / "durable.py")
    for name in GUEST_MODULES:
        shutil.copyfile(SOURCE / name, pkg / name)
        written.append(pkg / name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m wrennd.guest.bundle DEST")
    for path in stage(Path(sys.argv[1])):
        print(path)
