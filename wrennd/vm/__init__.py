"""Firecracker driver: API client, request builders, process launcher and jailer layout.

The same code drives Firecracker and fcsim; nothing here knows which one runs.
"""
