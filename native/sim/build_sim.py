"""cffi (API mode, out of line) build script for ``wrennd_sim._simnative``.

The VMM side of the userfaultfd protocol (guest memory, registration, the page
toucher) and the benchmark-only minimal handler: simulator and test code,
kept out of the daemon's ``wrennd._native``.  Same flags and CDEF rules as
the daemon's module (native/cffi_common.py).  The uffd itself is created by
the daemon's ``wr_uffd_create`` (native/uffd_open.h), which no C file here
needs, so none of the daemon's sources is compiled in.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# cffi runs this file by path: make the shared helper in native/ importable.
sys.path.insert(0, str(HERE.parent))

from cffi_common import builder  # noqa: E402

ffibuilder = builder(
    "wrennd_sim._simnative",
    headers=sorted(HERE.glob("*.h")),
    sources=sorted(HERE.glob("*.c")),
    include_dirs=[HERE],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
