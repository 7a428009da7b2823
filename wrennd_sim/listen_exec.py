"""Exec a program with fds at 3, 4, ... and LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, as
systemd does for a service it (re)starts.  Used by fdstore.FdStore.launch_argv:
``listen_exec.py PROGRAM ARGS...`` with FDSTORE_TEST_FDS (inherited fd numbers, in
order) and FDSTORE_TEST_NAMES (their names, colon-separated)."""

import fcntl
import os
import sys


def main() -> None:
    raw = os.environ.pop("FDSTORE_TEST_FDS", "")
    names = os.environ.pop("FDSTORE_TEST_NAMES", "")
    fds = [int(x) for x in raw.split(",") if x]
    # First out of the way (a passed fd may already sit at 3 + i), then into place.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    if fds:
        os.environ.update(
            LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names
        )
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
