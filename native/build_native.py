"""cffi (API mode, out of line) build script for ``wrennd._native``.

setuptools runs it through ``cffi_modules`` in setup.py.  The declarations
handed to cffi are the part of ``wrennd_native.h`` between the CDEF markers,
so the C header stays the single source of truth for the interface.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(p for p in HERE.glob("*.c"))
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]


def cdef_text() -> str:
    header = (HERE / "wrennd_native.h").read_text()
    begin = header.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = header.index("/* CDEF-END */")
    return header[begin:end]


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "wrennd._native",
    '#include "wrennd_native.h"',
    # Paths relative to the project root, where setuptools runs this script;
    # absolute paths would end up in the build metadata.
    sources=[str(p.relative_to(HERE.parent)) for p in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=CFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
