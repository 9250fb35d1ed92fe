"""A cell of the feature grid: noise level t, block, and (for pooled features) the pooling size.

Cells are values, not strings: feature files store them in their manifest and key their tensors
with `Cell.key()`, a name for the file only, never parsed back."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    """One feature map: the noise level `t`, the `block` tapped and the pooling; the key of every
    feature dictionary."""
    t: int | float       # timestep (VP) or σ (EDM)
    block: str           # module path in the denoiser
    pool: int | None = None   # adaptive average pooling to pool×pool; None: the whole map

    def key(self) -> str:
        return f"t={self.t}/{self.block}" + ("" if self.pool is None else f"/pool={self.pool}")

    def pooled(self, pool: int | None) -> "Cell":
        return Cell(self.t, self.block, pool)

    def as_json(self) -> dict:
        return {"t": self.t, "block": self.block, "pool": self.pool}

    @classmethod
    def from_json(cls, obj: dict) -> "Cell":
        return cls(obj["t"], obj["block"], obj.get("pool"))

    def __str__(self) -> str:
        return f"t={self.t} {self.block}" + ("" if self.pool is None else f" pool={self.pool}")


# A feature's key is a Cell for diffusion features and a string for baselines ("pixels", "daisy").

def key_to_json(key):
    return key.as_json() if isinstance(key, Cell) else key


def key_from_json(obj):
    return Cell.from_json(obj) if isinstance(obj, dict) else obj


def file_key(key) -> str:
    return key.key() if isinstance(key, Cell) else key
