"""Base images: ``state_dir/images/<name>.ext4``, read-only once registered.

``register`` validates an ext4 image (superblock magic, a size the block
layer accepts), copies it in (a reflink where the filesystem can, else a
sparse copy) under a temporary name, fsyncs it, makes it read-only and
publishes it without ever replacing an existing image.  ``delete`` is
refused while a sandbox or a template was made from it.  Blocking:
``catalogs.ImageCatalog`` runs these in a thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from wrennd import durable
from wrennd.sandbox.errors import BadImage, ImageExists, ImageNotFound
from wrennd.storage import fileops

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXT4_MAGIC = 0xEF53
_MAGIC_OFFSET = 1024 + 0x38  # superblock at 1024, s_magic at 0x38
SECTOR = 512


@dataclass(frozen=True)
class ImageInfo:
    name: str
    path: str
    size_bytes: int
    allocated_bytes: int


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ImageNotFound(
            name, "a name of 1-64 letters, digits, _.- (not starting with one of _.-)"
        )
    return name


def open_image(path: Path) -> int:
    """An fd of ``path`` if it is a regular ext4 image file; BadImage saying why not.

    Never blocks: a FIFO or a device opens with O_NONBLOCK and is refused by
    fstat before anything reads it.  The message never reveals facts (size,
    contents) of a file the caller may not be allowed to read: the daemon
    opens it with its own rights.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise BadImage(f"{path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage(f"{path}: not a regular file")
        sized = st.st_size > 0 and st.st_size % SECTOR == 0
        try:
            raw = os.pread(fd, 2, _MAGIC_OFFSET) if sized else b""
        except OSError:
            raw = b""  # unreadable (a proc file, a failing disk): not an image either way
        if len(raw) != 2 or struct.unpack("<H", raw)[0] != EXT4_MAGIC:
            raise BadImage(
                f"{path}: not an ext2/3/4 image (a superblock with magic 0xEF53 at byte 1080"
                f" and a size that is a positive multiple of {SECTOR} bytes)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def validate(path: Path) -> int:
    """The image's size if ``path`` is a regular ext4 image file; BadImage saying why not."""
    fd = open_image(path)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def register(images_dir: Path, name: str, source: Path) -> ImageInfo:
    check_name(name)
    # One open: what is validated is what is copied, even if the path changes meanwhile.
    src = open_image(source)
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
        final = images_dir / f"{name}.ext4"
        if final.exists():
            raise ImageExists(name)
        tmp = durable.temp_name(final)
        try:
            _copy_into(src, tmp)
            validate(tmp)  # what was copied, not only what was offered
            try:
                durable.publish_no_replace(tmp, final)
            except FileExistsError as e:
                raise ImageExists(name) from e
        finally:
            fileops.unlink_quiet(tmp)
    finally:
        os.close(src)
    return info(images_dir, name)


def _copy_into(src: int, tmp: Path) -> None:
    dst = fileops.create_exclusive(tmp, 0o400)
    try:
        try:
            fileops.reflink(src, dst)
        except OSError:
            fileops.copy_sparse(src, dst)
        os.fsync(dst)
    finally:
        os.close(dst)


def path_of(images_dir: Path, name: str) -> Path:
    """The registered image ``name`` (ImageNotFound otherwise)."""
    path = images_dir / f"{check_name(name)}.ext4"
    if not path.is_file():
        raise ImageNotFound(name, str(path))
    return path


def info(images_dir: Path, name: str) -> ImageInfo:
    path = images_dir / f"{check_name(name)}.ext4"
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise ImageNotFound(name, str(path)) from e
    return ImageInfo(name, str(path), st.st_size, st.st_blocks * 512)


def list_all(images_dir: Path) -> list[ImageInfo]:
    if not images_dir.is_dir():
        return []
    out = []
    for p in sorted(images_dir.glob("*.ext4")):
        if NAME_RE.match(p.stem) and not durable.is_temp_name(p.name):
            with contextlib.suppress(FileNotFoundError):
                out.append(info(images_dir, p.stem))
    return out
