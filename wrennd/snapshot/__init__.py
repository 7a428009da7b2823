"""Memory snapshots: header v1, mapping algebra, ingest, chains, collapse, export.

See layout.py for the on-disk layout of a snapshot directory and the
generation store, header.py for the header format, prefetch.py for the
prefetch map.  The UFFD engine reads a snapshot through `open_snapshot`.
"""

from __future__ import annotations

from wrennd.snapshot.chain import collapse, collapse_in_background, export, inspect, verify
from wrennd.snapshot.errors import (
    ChainChangedError,
    ChecksumError,
    GenerationError,
    HeaderError,
    IngestError,
    MappingError,
    SnapshotError,
    UnsupportedFilesystemError,
)
from wrennd.snapshot.header import Header, parse_header
from wrennd.snapshot.ingest import ingest_diff, ingest_full
from wrennd.snapshot.mapping import ZERO_SOURCE, Entry, Mapping, Run, crc32c, from_runs
from wrennd.snapshot.opened import OpenSnapshot, open_snapshot
from wrennd.snapshot.prefetch import read_prefetch_map, write_prefetch_map
from wrennd.snapshot.store import collect_garbage, delete_snapshot, recover

__all__ = [
    "ZERO_SOURCE",
    "ChainChangedError",
    "ChecksumError",
    "Entry",
    "GenerationError",
    "Header",
    "HeaderError",
    "IngestError",
    "Mapping",
    "MappingError",
    "OpenSnapshot",
    "Run",
    "SnapshotError",
    "UnsupportedFilesystemError",
    "collapse",
    "collapse_in_background",
    "collect_garbage",
    "crc32c",
    "delete_snapshot",
    "export",
    "from_runs",
    "ingest_diff",
    "ingest_full",
    "inspect",
    "open_snapshot",
    "parse_header",
    "read_prefetch_map",
    "recover",
    "verify",
    "write_prefetch_map",
]
