"""The HTTP console: the ``/test`` page, ``/metrics`` and a JSON-RPC bridge, off by default.

It runs in the daemon's event loop with aiohttp's server and answers through
the same method table as the Unix socket (wrennd.rpc.dispatch): no second API.
"""
