"""Upload a file to a sandbox, process it there, download the result; sha256 checked both ways.

WRENND_IMAGE=base python3 examples/transfer.py
"""

import hashlib
import os
import tempfile
from pathlib import Path

from wrennd.sdk import Sandbox

IMAGE = os.environ.get("WRENND_IMAGE", "base")

with tempfile.TemporaryDirectory() as tmp, Sandbox.create(IMAGE, memory_mib=128) as sb:
    data = Path(tmp, "input.bin")
    data.write_bytes(os.urandom(8 << 20))
    sent = sb.files.upload(data, "/tmp/input.bin")
    print(f"uploaded {sent.size} bytes, sha256 {sent.sha256[:16]}...")
    guest_sum = sb.exec("sha256sum /tmp/input.bin").text.split()[0]
    print("the guest agrees:", guest_sum == hashlib.sha256(data.read_bytes()).hexdigest())
    sb.exec("gzip -k /tmp/input.bin")
    got = sb.files.download("/tmp/input.bin.gz", Path(tmp, "input.bin.gz"))
    print(f"downloaded {got.size} bytes of gzip, sha256 {got.sha256[:16]}...")
