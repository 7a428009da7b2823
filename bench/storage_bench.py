#!/usr/bin/env python3
"""Rootfs clone cost per sandbox, reflink vs copy, for a 1 GiB base image, in one run.

Each backend gets a fresh filesystem in a sparse loop file (reflink on btrfs
and on xfs, copy on ext4, where a copy is a real copy), the same base image
(default: 1 GiB of incompressible data, no holes: the copy's worst case),
and then N sandboxes are created, alternating between the backends so that
drift on a shared machine hits all of them alike.  Per sandbox it reports
the clone time (``StorageBackend.create``: clone + fsync + record) and the
disk it costs: the filesystem's allocated blocks before and after (statvfs,
after sync), plus the clone's own st_blocks (which counts shared extents
too, so it is not the cost for reflinks).  Needs root (mkfs, mount, loop).

    sudo .venv/bin/python bench/storage_bench.py [--base-mib 1024] [--sandboxes 4]
        [--data-fraction 1.0] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wrennd.storage import CopyBackend, ReflinkBackend, StorageBackend, loopdev

MiB = 1 << 20
CHUNK = 8 * MiB
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
}
CASES = (("reflink", "btrfs"), ("reflink", "xfs"), ("copy", "ext4"))
BACKENDS: dict[str, type[StorageBackend]] = {"reflink": ReflinkBackend, "copy": CopyBackend}


def sh(*argv: object) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def mount_fs(stack: contextlib.ExitStack, work: Path, fstype: str, size: int) -> Path:
    image, mnt = work / f"{fstype}.img", work / f"mnt-{fstype}"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(size)
    stack.callback(image.unlink)
    sh(*MKFS[fstype], image)
    device = loopdev.attach(image, read_only=False)
    stack.callback(loopdev.detach, device)
    sh("mount", "-t", fstype, device.path, mnt)
    stack.callback(sh, "umount", mnt)
    return mnt


def write_base(path: Path, size: int, data_fraction: float) -> None:
    """The same pseudo-random content on every filesystem; holes after each data run."""
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(size)
        for i, off in enumerate(range(0, size, CHUNK)):
            if (i * data_fraction) % 1 + data_fraction < 1:
                continue  # spread the holes evenly over the image
            f.seek(off)
            f.write(random.Random(i).randbytes(min(CHUNK, size - off)))
        f.flush()
        os.fsync(f.fileno())


def fs_used(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def run(base_size: int, sandboxes: int, data_fraction: float, work: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        setups = []
        for kind, fstype in CASES:
            mnt = mount_fs(stack, work, fstype, base_size * (sandboxes + 2) + 512 * MiB)
            base = mnt / "state" / "images" / "base.ext4"
            write_base(base, base_size, data_fraction)
            setups.append((kind, fstype, BACKENDS[kind](mnt / "state"), base))
        results: dict[str, dict[str, Any]] = {
            f"{k}-{fs}": {
                "backend": k,
                "fs": fs,
                "clone_s": [],
                "fs_used_bytes": [],
                "st_blocks_bytes": [],
            }
            for k, fs, _, _ in setups
        }
        for i in range(sandboxes):  # alternate: sandbox i on every backend, then i+1
            for kind, fstype, backend, base in setups:
                r = results[f"{kind}-{fstype}"]
                r.setdefault("base_allocated_bytes", base.stat().st_blocks * 512)
                before = fs_used(base)
                t0 = time.perf_counter()
                rec = backend.create(f"sb{i}", base)
                r["clone_s"].append(time.perf_counter() - t0)
                r["fs_used_bytes"].append(fs_used(base) - before)
                r["st_blocks_bytes"].append(rec.layer.stat().st_blocks * 512)
        for r in results.values():
            r["clone_s_median"] = statistics.median(r["clone_s"])
            r["fs_used_per_sandbox_median_bytes"] = statistics.median(r["fs_used_bytes"])
    copy = results["copy-ext4"]
    ratios = {
        f"{name}_vs_copy": {
            "clone_time_copy_over_reflink": copy["clone_s_median"] / r["clone_s_median"],
            # None: the reflinks cost less than the filesystem's accounting shows (0 bytes).
            "disk_per_sandbox_copy_over_reflink": (
                copy["fs_used_per_sandbox_median_bytes"] / r["fs_used_per_sandbox_median_bytes"]
                if r["fs_used_per_sandbox_median_bytes"] > 0
                else None
            ),
        }
        for name, r in results.items()
        if r["backend"] == "reflink"
    }
    return {
        "benchmark": "storage_clone",
        "base_image_bytes": base_size,
        "base_data_fraction": data_fraction,
        "sandboxes_per_backend": sandboxes,
        "page_cache": "base warm in the page cache for every backend",
        "results": results,
        "ratios": ratios,
    }


def plot(doc: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["results"])
    times = [doc["results"][n]["clone_s_median"] * 1000 for n in names]
    disk = [doc["results"][n]["fs_used_per_sandbox_median_bytes"] / MiB for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(names, times)
    a.set_ylabel("clone time per sandbox (ms, median)")
    a.set_yscale("log")
    b.bar(names, disk)
    b.set_ylabel("disk per sandbox (MiB allocated)")
    b.set_yscale("symlog")
    fig.suptitle(f"sandbox rootfs from a {doc['base_image_bytes'] // MiB} MiB base image")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-mib", type=int, default=1024)
    ap.add_argument("--sandboxes", type=int, default=4)
    ap.add_argument(
        "--data-fraction", type=float, default=1.0, help="share of the base that is data"
    )
    ap.add_argument("--workdir", default="/var/tmp", help="where the loop files go (sparse)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--plot", help="also draw the medians into this PNG")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("storage_bench needs root (mkfs, loop devices, mount)", file=sys.stderr)
        return 2
    if not 0 < args.data_fraction <= 1:
        print("--data-fraction must be in (0, 1]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wrennd-storage-bench-", dir=args.workdir) as work:
        doc = run(args.base_mib * MiB, args.sandboxes, args.data_fraction, Path(work))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.plot:
        plot(doc, args.plot)
    for name, r in doc["ratios"].items():
        disk = r["disk_per_sandbox_copy_over_reflink"]
        disk_text = "unmeasurably more" if disk is None else f"{disk:.0f}x the"
        print(
            f"{name}: copy takes {r['clone_time_copy_over_reflink']:.0f}x the time and "
            f"{disk_text} disk of a reflink",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
