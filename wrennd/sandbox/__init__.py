"""Sandbox lifecycle: state machine, persisted records, manager, reaper (DESIGN.md §2)."""
