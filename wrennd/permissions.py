"""Modes of the daemon's state: nothing in ``state_dir`` is for other users.

Sandbox layers hold the guests' files (a mode-0600 file in a guest is readable
from its layer by anyone who can read the layer), records and snapshots hold
their memory.  The daemon sets its umask to 077 so every file and directory it
or its VMMs create is private whatever umask it was started with, and files
written through wrennd.durable get an explicit 0600.  At start-up it checks
what an older version, an operator or a missing ``StateDirectoryMode`` left
looser: it warns, and with ``--fix-permissions`` it takes the group and other
bits away.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from wrennd.log import kv

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
STATE_DIR_MODE = 0o700
# Only this many loose paths are named in the log; the count says how many there are.
MAX_REPORTED = 10


def private_umask() -> None:
    os.umask(PRIVATE_UMASK)


def make_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` 0700 (an existing one keeps its mode: ``check`` reports it)."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        state_dir.mkdir(mode=STATE_DIR_MODE)
    except FileExistsError:
        return
    os.chmod(state_dir, STATE_DIR_MODE)  # mkdir's mode passes through the umask


def loose(state_dir: Path) -> list[tuple[Path, int]]:
    """Every path under (and including) ``state_dir`` that its group or others may use,
    with its mode; symbolic links are not followed (their own mode means nothing)."""
    found = []
    for top, dirs, files in os.walk(state_dir):
        # A directory is seen as its own ``top``; symbolic links to directories among
        # ``dirs`` are not walked into and are skipped below.
        for name in [".", *files, *(d for d in dirs if os.path.islink(os.path.join(top, d)))]:
            path = Path(top) / name if name != "." else Path(top)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append((path, stat.S_IMODE(mode)))
    return found


def check(state_dir: Path, fix: bool) -> int:
    """Warn about (and with ``fix``, tighten) loose modes; how many were found."""
    if not state_dir.exists():
        return 0
    found = loose(state_dir)
    for path, mode in found[:MAX_REPORTED]:
        log.warning("state file readable by others", extra=kv(path=path, mode=f"{mode:04o}"))
    if found and not fix:
        log.warning(
            "loose modes in the state directory: restart with --fix-permissions to tighten",
            extra=kv(count=len(found), state_dir=state_dir),
        )
    if fix:
        for path, mode in found:
            os.chmod(path, mode & ~0o077, follow_symlinks=False)
        if found:
            log.info("modes tightened", extra=kv(count=len(found), state_dir=state_dir))
    return len(found)
