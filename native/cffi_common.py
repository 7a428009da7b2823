"""What the two cffi build scripts share: flags, CDEF extraction, the builder.

``native/build_native.py`` builds the daemon's ``wrennd._native``;
``native/sim/build_sim.py`` builds the simulator's ``wrennd_sim._simnative``.
Both are API mode, out of line, with the same warnings-as-errors flags.  The
declarations handed to cffi are the parts of the headers between the CDEF
markers, so each C header stays the single source of truth for its interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
# setuptools runs the build scripts from the project root; paths handed to
# cffi are relative to it, since absolute ones would end up in build metadata.
ROOT = NATIVE.parent
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]


def cdef_text(header: Path) -> str:
    """The header's CDEF block; empty for internal headers, which have none."""
    text = header.read_text()
    if "/* CDEF-BEGIN */" not in text:
        return ""
    begin = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[begin:end]


def builder(
    module: str, headers: Sequence[Path], sources: Sequence[Path], include_dirs: Sequence[Path]
) -> FFI:
    """An FFI for `module` exposing the CDEF blocks of `headers`, compiled from `sources`."""
    ffi = FFI()
    for h in headers:
        ffi.cdef(cdef_text(h))
    ffi.set_source(
        module,
        "".join(f'#include "{h.name}"\n' for h in headers),
        sources=[str(p.relative_to(ROOT)) for p in sources],
        include_dirs=[str(d.relative_to(ROOT)) for d in include_dirs],
        extra_compile_args=CFLAGS,
    )
    return ffi
