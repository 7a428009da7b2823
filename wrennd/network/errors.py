"""Typed errors of the network layer: each says which slot or name and what went wrong."""

from __future__ import annotations


class NetworkError(Exception):
    """Base class of everything wrennd.network raises on purpose."""


class SlotsExhausted(NetworkError):
    def __init__(self, capacity: int) -> None:
        super().__init__(f"all {capacity} network slots are in use")
        self.capacity = capacity


class SlotError(NetworkError):
    """A slot number that is out of range, already taken, or not allocated."""


class NameCollision(NetworkError):
    """A namespace or link with a name wrennd needs already exists; it is left alone."""

    def __init__(self, kind: str, name: str, owner: str) -> None:
        super().__init__(
            f"{kind} {name!r} already exists ({owner}); refusing to reuse or delete it"
        )
        self.kind = kind
        self.name = name
        self.owner = owner


class SetupError(NetworkError):
    """Building a sandbox's network failed; what had been made was rolled back."""

    def __init__(self, slot: int, step: str, cause: BaseException) -> None:
        super().__init__(f"network slot {slot}: {step} failed: {cause}")
        self.slot = slot
        self.step = step
