#!/usr/bin/env python3
"""Run `make test` several times in a row under a CPU hog, to find timing flakes.

Each run starts `stress-ng --cpu N` (its own process group, killed after the
run), runs the make target with its output in `<log-dir>/run<i>.log`, and
prints one line: exit status, wall time and pytest's summary line.  A summary
of all runs goes to `<log-dir>/summary`.  Exit status 1 when any run failed.

`make stress` runs it with the defaults (5 runs of `make test`, `--cpu 2`).
Signals the suite relies on (SIGINT for the console's Ctrl-C test, SIGQUIT,
SIGHUP) are put back to their defaults for make: a shell's background job
inherits SIGINT ignored, and the console test would then fail for a reason
that has nothing to do with the code.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_LINE = re.compile(r"^=+ (.*(passed|failed|error).*) =+$")


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _pytest_summary(log: Path) -> str:
    found = ""
    with log.open(errors="replace") as lines:
        for line in lines:
            match = SUMMARY_LINE.match(line.strip())
            if match:
                found = match.group(1)
    return found or "no pytest summary (failed before pytest?)"


def _one_run(index: int, args: argparse.Namespace, log_dir: Path) -> tuple[int, str]:
    hog = subprocess.Popen(
        ["stress-ng", "--cpu", str(args.cpus), "--timeout", "7200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = log_dir / f"run{index}.log"
    start = time.monotonic()
    try:
        with log.open("w") as out:
            rc = subprocess.call(
                ["make", "-C", str(ROOT), args.target],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_default_signals,
            )
    finally:
        os.killpg(hog.pid, signal.SIGKILL)
        hog.wait()
    seconds = time.monotonic() - start
    line = f"run {index}: rc={rc} {seconds:.0f} s  {_pytest_summary(log)}"
    return rc, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="stress-ng --cpu workers")
    parser.add_argument("--target", default="test", help="make target to run")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "build" / "stress")
    parser.add_argument("--stop-on-failure", action="store_true")
    args = parser.parse_args()
    if shutil.which("stress-ng") is None:
        sys.exit("stress-ng is missing: `make install` installs it (deps/debian-packages.txt)")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    summary = args.log_dir / "summary"
    failed = done = 0
    with summary.open("a") as record:
        record.write(f"== {time.strftime('%F %T')} commit {commit or '?'} --cpu {args.cpus}\n")
        for index in range(1, args.runs + 1):
            rc, line = _one_run(index, args, args.log_dir)
            print(line, flush=True)
            record.write(line + "\n")
            record.flush()
            done += 1
            failed += rc != 0
            if rc != 0 and args.stop_on_failure:
                break
    print(f"{done - failed} of {done} runs passed; logs in {args.log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
