# cffi_modules has no pyproject.toml spelling; everything else is in pyproject.
# Two extensions: the daemon's wrennd._native and the simulator's
# wrennd_sim._simnative (VMM-side code the daemon never loads); and one small
# program, wrennd-merge-exec, which the daemon puts in front of a VMM to make its
# memory mergeable by KSM (a separate program: nothing runs between fork and exec).
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

MERGE_EXEC_SRC = "native/exec/merge_exec.c"
MERGE_EXEC = "wrennd-merge-exec"
C_FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]


class BuildWithHelpers(build_ext):
    """build_ext, plus the wrennd-merge-exec program beside the wrennd package."""

    def run(self) -> None:
        super().run()
        out_dir = Path("wrennd") if self.inplace else Path(self.build_lib) / "wrennd"
        target = out_dir / MERGE_EXEC
        objects = self.compiler.compile(
            [MERGE_EXEC_SRC], output_dir=self.build_temp, extra_postargs=C_FLAGS
        )
        self.compiler.link_executable(objects, MERGE_EXEC, output_dir=str(out_dir))
        target.chmod(0o755)


setup(
    cmdclass={"build_ext": BuildWithHelpers},
    cffi_modules=["native/build_native.py:ffibuilder", "native/sim/build_sim.py:ffibuilder"],
)
