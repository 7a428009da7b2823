"""A layer's state kept beside a memory snapshot, and put back when the sandbox goes back
to that snapshot: memory N is never paired with disk N+k.

A copy is a reflink (FICLONE) where the filesystem shares extents (btrfs, xfs:
it costs metadata only), else a sparse copy.  For device-mapper the layer is
the snapshot's CoW store, which is a plain file while detached, so the same
copy serves every backend.  Both directions write a temporary file and rename
it into place: a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from wrennd.durable import replacing
from wrennd.storage.fileops import copy_sparse, reflink

# The errors FICLONE gives where extents cannot be shared: copy instead.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF}


def clone_file(src: Path, dest: Path) -> str:
    """Make ``dest`` a copy of ``src`` (atomically); "reflink" or "copy", as it was made."""
    with open(src, "rb") as s, replacing(dest, mode=0o600) as fd:
        try:
            reflink(s.fileno(), fd)
            return "reflink"
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
        os.ftruncate(fd, 0)
        copy_sparse(s.fileno(), fd)
        return "copy"
