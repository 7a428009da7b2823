# cffi_modules has no pyproject.toml spelling; everything else is in pyproject.
# Two extensions: the daemon's wrennd._native and the simulator's
# wrennd_sim._simnative (VMM-side code the daemon never loads).
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder", "native/sim/build_sim.py:ffibuilder"])
