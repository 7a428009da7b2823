"""Typed errors of the snapshot package: each says what is wrong and where."""

from __future__ import annotations


class SnapshotError(Exception):
    """Base of every snapshot error; its message starts with the file it concerns."""

    @property
    def file(self) -> str | None:
        """The file named at the start of the message, if it names one."""
        head = str(self).split(": ", 1)[0]
        return head if head.startswith("/") else None


class HeaderError(SnapshotError):
    """A header (or prefetch map) that is corrupt, truncated or breaks an invariant."""


class MappingError(HeaderError):
    """Mapping entries that break an invariant (unsorted, gap, overlap, ...)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class GenerationError(SnapshotError):
    """A generation file named by a header is missing, short or unreadable."""


class IngestError(SnapshotError):
    """A memfile that cannot be ingested (wrong size, misaligned extents, ...)."""


class UnsupportedFilesystemError(IngestError):
    """The memfile's filesystem cannot express the holes a Diff memfile needs."""


class ChainChangedError(SnapshotError):
    """The snapshot's header changed while a collapse was building its replacement."""
