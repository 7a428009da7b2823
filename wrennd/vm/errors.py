"""Typed errors of the Firecracker driver."""

from __future__ import annotations

import signal


class VmmError(Exception):
    """Base class of every error raised by wrennd.vm."""


class FirecrackerError(VmmError):
    """Firecracker refused a request; ``fault_message`` is its own explanation."""

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {fault_message}")
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


class ApiTransportError(VmmError):
    """The API socket could not be reached or the answer was not HTTP/JSON we understand."""


class UnsupportedByVersion(VmmError):
    """A request needs a field the running Firecracker version does not accept."""

    def __init__(
        self, field: str, since: tuple[int, int, int], running: tuple[int, int, int]
    ) -> None:
        need = ".".join(map(str, since))
        have = ".".join(map(str, running))
        super().__init__(f"{field} needs Firecracker >= {need}, this one is {have}")
        self.field = field
        self.since = since
        self.running = running


class VmmExited(VmmError):
    """The VMM process exited when it should not have; carries its status and last log lines."""

    def __init__(self, what: str, returncode: int, log_tail: list[str]) -> None:
        detail = describe_returncode(returncode)
        tail = "\n".join(log_tail) if log_tail else "(no log output)"
        super().__init__(f"{what}: VMM {detail}; last log lines:\n{tail}")
        self.returncode = returncode
        self.log_tail = log_tail


class VmmStartTimeout(VmmError):
    """The VMM is alive but its API socket did not appear in time."""

    def __init__(self, socket: str, timeout: float, log_tail: list[str]) -> None:
        tail = "\n".join(log_tail) if log_tail else "(no log output)"
        super().__init__(
            f"API socket {socket} did not appear within {timeout:.1f}s; last log lines:\n{tail}"
        )
        self.log_tail = log_tail


class JailerError(VmmError):
    """The jailer layout or command line cannot be built from the given inputs."""


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"
