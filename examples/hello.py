"""Create a sandbox, run commands in it, write and read a file; it is destroyed on exit.

WRENND_IMAGE=base python3 examples/hello.py
"""

import os

from wrennd.sdk import Sandbox

IMAGE = os.environ.get("WRENND_IMAGE", "base")

with Sandbox.create(IMAGE, memory_mib=128, env={"GREETING": "hello"}) as sb:
    print("created", sb.id)
    result = sb.exec('echo "$GREETING from $(uname -n)"')
    print("exec:", result.text.strip(), "exit", result.exit_code)
    # Output is bytes, exactly as the command wrote them.
    print("binary:", sb.exec(["printf", "\\000\\377"]).stdout)
    sb.files.write("/root/notes.txt", "written by the SDK\n")
    print("file:", sb.files.read("/root/notes.txt").decode().strip())
    failed = sb.exec("ls /nonexistent")
    print("ls failed with exit", failed.exit_code, "stderr:", failed.stderr.decode().strip())
print("destroyed")
