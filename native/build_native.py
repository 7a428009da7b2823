"""cffi (API mode, out of line) build script for ``wrennd._native``.

setuptools runs it through ``cffi_modules`` in setup.py.  The declarations
handed to cffi are the parts of the headers between the CDEF markers,
so the C header stays the single source of truth for the interface.  Every
``native/*.h`` contributes its CDEF block; one header per component keeps
their interfaces apart.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("*.c"))
HEADERS = sorted(HERE.glob("*.h"))
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]


def cdef_text(header: Path) -> str:
    """The header's CDEF block; empty for internal headers, which have none."""
    text = header.read_text()
    if "/* CDEF-BEGIN */" not in text:
        return ""
    begin = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[begin:end]


ffibuilder = FFI()
for h in HEADERS:
    ffibuilder.cdef(cdef_text(h))
ffibuilder.set_source(
    "wrennd._native",
    "".join(f'#include "{h.name}"\n' for h in HEADERS),
    # Paths relative to the project root, where setuptools runs this script;
    # absolute paths would end up in the build metadata.
    sources=[str(p.relative_to(HERE.parent)) for p in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=CFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
