"""Pieces of params schemas and the error translation the sandbox-facing methods share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from wrennd.rpc import errors as rpc
from wrennd.sandbox import LifecycleError

ID = {"type": "string", "pattern": "^sb-[0-9a-f]{12}$"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# A file system path: the kernel ends a path at NUL, so one inside it cannot be meant.
PATH = {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[^\\x00]*$"}
# Seconds until a sandbox's timeout action; ten years is as good as never.
TIMEOUT = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10 * 365 * 86400}
NAME = {"type": "string", "minLength": 1, "maxLength": 64}


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    """A closed params object: these properties, these required, nothing else."""
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Sandbox-layer errors as the API's typed errors, through the one code table."""
    try:
        yield
    except LifecycleError as e:
        raise rpc.from_code(e.code, str(e), e.data) from e
