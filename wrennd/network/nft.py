"""A minimal in-process binding to libnftables' JSON interface.

Why libnftables in process rather than ``nft -j -f -``: a sandbox needs a
ruleset change inside its own network namespace and one in the host's, and
the namespace of a netlink socket is the one of the thread that opens it.
A context created on a thread that entered the namespace talks to that
namespace without a helper process, and a change costs one netlink batch
instead of a fork+exec of nft (which would also need nsenter).  Every call is
one ``nft_run_cmd_from_buffer``: the kernel applies its batch atomically.

The official Python binding (Debian's python3-nftables) lives outside the
virtualenv and is not on PyPI, so the six C functions it wraps are bound
here with ctypes, against the same library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    """libnftables refused a command batch; nothing of the batch was applied."""

    def __init__(self, message: str, commands: object) -> None:
        super().__init__(message)
        self.commands = commands


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    lib = ctypes.CDLL(name)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


class Nft:
    """One libnftables context, bound to the network namespace of the creating thread.

    Use it on that thread only, and close it there (``with Nft() as nft:``).
    """

    def __init__(self) -> None:
        self._lib = _library()
        ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise MemoryError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply ``{"nftables": commands}`` as one atomic batch; return the JSON output."""
        if self._ctx is None:
            raise ValueError("nft context is closed")
        doc = json.dumps({"nftables": commands}).encode()
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, doc)
        out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(f"nft: {err.decode(errors='replace').strip()}", commands)
        text = out.decode()
        return json.loads(text) if text.strip() else {}

    def list_table(self, family: str, table: str) -> list[dict[str, Any]] | None:
        """The table's objects (chains, sets with elements, rules), or None when absent."""
        try:
            out = self.run([{"list": {"table": {"family": family, "name": table}}}])
        except NftError as e:
            if "No such file or directory" in str(e):
                return None
            raise
        items: list[dict[str, Any]] = out.get("nftables", [])
        return [i for i in items if "metainfo" not in i]
