"""Guest agent (runs inside the VM) and its host-side client.

Guest-side modules (agent, agent_fs, agent_proc, protocol) import only the
standard library, aiohttp and each other: the image carries just these files.
"""
