"""Simulator and test support for wrennd: the daemon never imports this package."""
