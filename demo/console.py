#!/usr/bin/env python3
"""make console: a scratch wrennd with the HTTP console on a free loopback port, until Ctrl-C.

Like make demo: the guest image, a scratch state dir, a test-bed network
namespace playing the host, Firecracker where it can run guests and fcsim
otherwise.  Prints the console's URL with its token; Ctrl-C stops the daemon
(it pauses its sandboxes) and removes everything this made.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

# demo/demo.py: the scratch daemon and its clean-up, shared with make demo.
from demo import say, scratch_host


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> int:
    if os.geteuid() != 0:
        print("make console needs root (namespaces, loop devices, userfaultfd)", file=sys.stderr)
        return 2
    # Ctrl-C is how this stops: a shell that started it in the background (or any parent
    # that ignores SIGINT) would leave it ignored, and then nothing could stop it cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    port = free_port()
    os.environ["WRENND_HTTP_LISTEN"] = f"127.0.0.1:{port}"
    with scratch_host("console", "c") as (_, run):
        # Ctrl-C may come at any moment once the daemon is up, even while the URL is
        # still being printed: every one of them stops it the same way.
        try:
            serve(run, port)
        except KeyboardInterrupt:
            say("stopping")
    return 0


def serve(run: Path, port: int) -> None:
    """Print how to reach the console, then wait for Ctrl-C (KeyboardInterrupt)."""
    token_file = run / "http.token"
    for _ in range(100):
        if token_file.exists():
            break
        time.sleep(0.1)
    token = token_file.read_text().strip()
    say("console ready")
    print(f"  open  http://127.0.0.1:{port}/test?token={token}")
    print(f"  from another machine: ssh -L {port}:127.0.0.1:{port} THIS-HOST, same URL")
    print(f"  metrics: curl -H 'Authorization: Bearer {token}' 127.0.0.1:{port}/metrics")
    print(f"  daemon log: {run / 'wrennd.log'}")
    print("  Ctrl-C stops the daemon and removes everything", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
