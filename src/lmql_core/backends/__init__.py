"""Backends built into the core."""
