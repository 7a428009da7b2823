"""Guest agent, files and filesystem freeze: blocking helpers the agent runs in an executor.

Runs inside the guest: standard library and wrennd.guest.protocol only.  Every
path the host sends is absolute and resolved under the agent's root ("/" in a
guest; a temporary directory in tests); ``..`` never climbs above that root.
"""

# Paths arrive as strings from the wire and are resolved under the agent root as
# strings; pathlib would only wrap and unwrap them.

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import pwd
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrennd import durable
from wrennd.guest import protocol as p

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)

_ERRNO_CODES = {
    errno.ENOENT: p.ENOENT,
    errno.EACCES: p.EACCES,
    errno.EPERM: p.EACCES,
    errno.ENOTDIR: p.ENOTDIR,
    errno.EISDIR: p.EISDIR,
    errno.EEXIST: p.EEXIST,
    errno.ENOTEMPTY: p.ENOTEMPTY,
    errno.EINVAL: p.EINVAL,
}


class AgentError(Exception):
    """An error the agent answers with ``{"error": {...}}`` and the code's HTTP status."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    @property
    def status(self) -> int:
        return p.ERROR_STATUS.get(self.code, 500)


def os_error(exc: OSError, path: str) -> AgentError:
    code = _ERRNO_CODES.get(exc.errno or 0, p.EIO)
    return AgentError(code, f"{path}: {exc.strerror or exc}", path=path, errno=exc.errno)


@dataclass(frozen=True)
class Root:
    """The directory the agent's absolute paths are relative to."""

    path: str

    def resolve(self, path: str) -> str:
        clean = posixpath.normpath("/" + path.lstrip("/"))
        if self.path == "/":
            return clean
        return self.path.rstrip("/") + (clean if clean != "/" else "/")

    def outside(self, real: str) -> str:
        """The host-visible form of a resolved path (for messages and listings)."""
        if self.path == "/":
            return real
        rel = real[len(self.path.rstrip("/")) :]
        return rel or "/"


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def file_info(real: str, shown: str) -> p.FileInfo:
    st = os.lstat(real)
    target = os.readlink(real) if stat.S_ISLNK(st.st_mode) else None
    return p.FileInfo(
        name=posixpath.basename(shown) or "/",
        path=shown,
        type=_kind(st.st_mode),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime,
        target=target,
    )


def stat_path(root: Root, path: str) -> p.FileInfo:
    real = root.resolve(path)
    try:
        return file_info(real, path)
    except OSError as exc:
        raise os_error(exc, path) from None


def list_dir(root: Root, path: str) -> list[p.FileInfo]:
    real = root.resolve(path)
    try:
        names = sorted(os.listdir(real))
    except OSError as exc:
        raise os_error(exc, path) from None
    out = []
    for name in names:
        try:
            out.append(file_info(posixpath.join(real, name), posixpath.join(path, name)))
        except FileNotFoundError:
            continue  # removed between listdir and lstat
    return out


def owner_ids(user: str | None, uid: int | None, gid: int | None) -> tuple[int, int]:
    """uid/gid for a new file: explicit ids win over a user name; -1 keeps the agent's."""
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise AgentError(p.NO_USER, f"no such user {user!r}", user=user) from None
        uid = pw.pw_uid if uid is None else uid
        gid = pw.pw_gid if gid is None else gid
    return (-1 if uid is None else uid, -1 if gid is None else gid)


def mkdir(root: Root, path: str, mode: int, parents: bool, owner: tuple[int, int]) -> bool:
    """Create a directory; with ``parents`` like mkdir -p. Returns False if it existed."""
    real = root.resolve(path)
    try:
        if parents:
            if os.path.isdir(real):
                return False
            os.makedirs(real, mode=mode, exist_ok=True)
        else:
            os.mkdir(real, mode)
        os.chmod(real, mode)  # mkdir applies the umask
        if owner != (-1, -1):
            os.chown(real, *owner)
    except OSError as exc:
        raise os_error(exc, path) from None
    return True


def remove(root: Root, path: str, recursive: bool) -> None:
    real = root.resolve(path)
    if real == root.resolve("/"):
        raise AgentError(p.EINVAL, "refusing to remove the root directory", path=path)
    try:
        st = os.lstat(real)
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                shutil.rmtree(real)
            else:
                os.rmdir(real)
        else:
            os.unlink(real)
    except OSError as exc:
        failed = getattr(exc, "filename", None) or real
        raise os_error(exc, root.outside(str(failed))) from None


class AtomicWriter:
    """A file written to a temporary name beside its target, renamed over it on commit."""

    def __init__(self, root: Root, path: str, mode: int | None, owner: tuple[int, int]) -> None:
        self.path = path
        self.real = root.resolve(path)
        self.owner = owner
        directory = posixpath.dirname(self.real)
        try:
            if os.path.isdir(self.real):
                raise AgentError(p.EISDIR, f"{path}: is a directory", path=path)
            old_mode = stat.S_IMODE(os.stat(self.real).st_mode) if mode is None else mode
        except FileNotFoundError:
            old_mode = 0o644
        except OSError as exc:
            raise os_error(exc, path) from None
        self.mode = old_mode
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=".wrenn-", dir=directory)
        except OSError as exc:
            raise os_error(exc, posixpath.dirname(path) or "/") from None
        self.file = os.fdopen(fd, "wb", buffering=0)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[self.file.write(view) or 0 :]
        self.size += len(chunk)

    def commit(self) -> int:
        try:
            os.fchmod(self.file.fileno(), self.mode)
            if self.owner != (-1, -1):
                os.fchown(self.file.fileno(), *self.owner)
            os.fsync(self.file.fileno())
            self.file.close()
            durable.publish(Path(self.tmp), Path(self.real))
        except OSError as exc:
            self.abort()
            raise os_error(exc, self.path) from None
        return self.size

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def open_for_read(root: Root, path: str) -> tuple[Any, int]:
    real = root.resolve(path)
    try:
        f = open(real, "rb", buffering=0)  # noqa: SIM115 (the caller streams and closes it)
    except OSError as exc:
        raise os_error(exc, path) from None
    st = os.fstat(f.fileno())
    if stat.S_ISDIR(st.st_mode):
        f.close()
        raise AgentError(p.EISDIR, f"{path}: is a directory", path=path)
    return f, st.st_size


class Freezer:
    """FIFREEZE/FITHAW of the filesystem holding the agent's root."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.frozen = False
        self._lock = threading.Lock()  # the auto-thaw timer runs in its own thread
        self._timer: threading.Timer | None = None

    def freeze(self, thaw_after: float, abandoned: threading.Event | None = None) -> None:
        """Sync and freeze; answers only once frozen. Thaws by itself after ``thaw_after`` s.

        ``abandoned`` set means the caller stopped waiting (its deadline passed): a freeze
        that completes after that is undone at once, since nobody will snapshot or thaw.
        """
        with self._lock:
            self._freeze()
            if abandoned is not None and abandoned.is_set():
                self._thaw()
                raise AgentError(p.CONFLICT, "frozen after the caller's deadline: thawed again")
            # A thread, not the event loop: if anything on the loop ever blocks on
            # the frozen filesystem, the timer still thaws it.
            self._timer = threading.Timer(thaw_after, self.thaw)
            self._timer.daemon = True
            self._timer.start()

    def _freeze(self) -> None:
        if self.frozen:
            raise AgentError(p.CONFLICT, "the root filesystem is already frozen")
        if not os.path.ismount(self.root.path):
            # Freezing whatever filesystem a plain directory lives on (the host's,
            # in a test) would stall everything else on it.
            raise AgentError(p.CONFLICT, f"{self.root.path} is not a mount point; not freezing")
        os.sync()
        self._ioctl(FIFREEZE)
        self.frozen = True

    def thaw(self) -> bool:
        """Thaw if this agent froze the filesystem; True if it was frozen."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return self._thaw()

    def _thaw(self) -> bool:
        if not self.frozen:
            return False
        try:
            self._ioctl(FITHAW)
        except AgentError as exc:
            if exc.extra.get("errno") != errno.EINVAL:  # EINVAL: someone else thawed it
                raise
        self.frozen = False
        return True

    def _ioctl(self, request: int) -> None:
        fd = os.open(self.root.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, request, 0)
        except OSError as exc:
            raise os_error(exc, "/") from None
        finally:
            os.close(fd)
