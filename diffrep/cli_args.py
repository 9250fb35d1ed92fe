"""Argument types shared by every `diffrep` command module."""

from __future__ import annotations


def csv_of(kind):
    """A comma-separated list, each item converted by `kind` ("a,b," → [kind(a), kind(b)])."""
    return lambda s: [kind(v) for v in s.split(",") if v.strip()]


def noise_level(text: str):
    """A noise level as given: an integer stays an integer (timestep), anything else is σ (EDM)."""
    value = float(text)
    return int(value) if value.is_integer() else value
