"""cffi (API mode, out of line) build script for the daemon's ``wrennd._native``.

setuptools runs it through ``cffi_modules`` in setup.py.  Every ``native/*.h``
contributes its CDEF block (see cffi_common.py); one header per component
keeps their interfaces apart.  The simulator's VMM-side code is in
``native/sim/`` and builds into its own module (``native/sim/build_sim.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# cffi runs this file by path: make its sibling helper importable.
sys.path.insert(0, str(HERE))

from cffi_common import builder  # noqa: E402

ffibuilder = builder(
    "wrennd._native",
    headers=sorted(HERE.glob("*.h")),
    sources=sorted(HERE.glob("*.c")),
    include_dirs=[HERE],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
