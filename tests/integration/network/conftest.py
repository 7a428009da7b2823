"""Fixtures for the network tests: unique names, and cleanup even when a test fails.

Every namespace a test makes is named with a per-run prefix, so concurrent
runs and the daemon's own ``wrn-`` namespaces never collide, and is removed
at teardown whatever happened.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from wrennd.network import nsutil


@pytest.fixture
def prefix() -> Iterator[str]:
    """A short unique name prefix (interface names have 15 characters)."""
    p = f"wt{secrets.token_hex(2)}-"
    yield p
    for name in nsutil.list_named():
        if name.startswith(p):
            nsutil.remove(name)
