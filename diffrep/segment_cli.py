"""Command-line commands: segment train|predict|eval (DDPM-Seg)."""

from __future__ import annotations


def add_commands(sub) -> dict:
    """Add this method's sub-commands to the `diffrep` parser; return {command name: function(args)}."""
    return {}
