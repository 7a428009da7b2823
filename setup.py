# cffi_modules has no pyproject.toml spelling; everything else is in pyproject.
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
