"""A feature source over a whole image set, streamed in batches through a DataLoader, pooled as asked,
either gathered in memory (`collect_features`, for what is small) or written to the sharded store as
it is produced (`extract_to_store`: resumable, split over processes)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.runtime import barrier, release_memory
from ..data.stream import ImageBatches
from .cell import Cell
from .shards import FeatureStore, ShardWriter, in_memory
from .sources import DiffusionFeatures

SHARD_BYTES = 64 * 2 ** 20   # a shard holds about this many bytes of features (at most MAX_SHARD images): the
                             # rows of the shard being filled are what extraction holds beyond one batch
MAX_SHARD = 4096


def pooled(feats: dict, pools: list[int] | None) -> dict:
    """Each map average-pooled to p×p and flattened (B×C·p²) for every p, as float32; without pools,
    the maps."""
    if pools is None:
        return feats
    return {cell.pooled(p): F.adaptive_avg_pool2d(f, p).flatten(1).float() for cell, f in feats.items() for p in pools}


def pooled_maps(source, batch: torch.Tensor, idx, pools: list[int] | None) -> dict:
    """`pooled` maps of a batch. A diffusion source's bf16 maps are pooled in bf16 and only the pooled
    values made float32: converting every full map first took about a sixth of mnist-ddpm's extraction
    time (float32 maps are pooled exactly as before)."""
    if pools is not None and isinstance(source, DiffusionFeatures):
        return pooled(source.maps(batch, indices=idx, as_float=False), pools)
    return pooled(source.maps(batch, indices=idx), pools)


@torch.no_grad()
def collect_features(source, images, pools: list[int] | None = None, batch_size: int = 250, desc: str = "features",
                     workers: int = 0, transform=None) -> dict[Cell, torch.Tensor]:
    """{Cell(t, block[, pool]): N×…} over all `images` (a tensor or `ImageFiles`), in memory. With
    `pools`, each map is average-pooled to p×p and flattened (N×C·p²); without, the maps are kept.
    Image i's noise comes from (source's seed, i, draw, t): the result does not depend on the batches."""
    parts: dict[Cell, list[torch.Tensor]] = {}
    for idx, batch in tqdm(ImageBatches(images, batch_size, workers, transform), desc=desc, dynamic_ncols=True):
        release_memory()
        for key, f in pooled_maps(source, batch, idx, pools).items():
            parts.setdefault(key, []).append(f)
    return {k: torch.cat(v) for k, v in parts.items()}


def bytes_per_image(source, image_size: int, strides: dict, pools: list[int] | None) -> int:
    """float32 bytes of one image's features: maps at their stride, or pooled to each p."""
    total = 0
    for key, channels in source.channels.items():
        side = image_size // strides.get(getattr(key, "block", key), 1)
        total += channels * (sum(p * p for p in pools) if pools else side * side) * 4
    return total


def default_shard_size(per_image: int) -> int:
    """Images per shard for `per_image` bytes of features per image: about 64 MB of features, at most
    4,096 images, at least one."""
    return max(1, min(MAX_SHARD, SHARD_BYTES // max(1, per_image)))


@torch.no_grad()
def extract_to_store(source, images, folder: str | Path, identity: dict, pools: list[int] | None, shard_size: int,
                     batch_size: int = 250, workers: int = 0, extra: dict | None = None, meta: dict | None = None,
                     state=None, desc: str = "features", transform=None) -> FeatureStore:
    """Features of `images` into the sharded store at `folder` (see `shards`), as they are produced,
    continuing what an earlier run with the same `identity` left; `extra` ({name: N×… tensor}, e.g.
    labels) is stored beside them. `state` (accelerate's PartialState, or None for one process)
    splits the shards over processes; every process returns the complete store."""
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    writer = ShardWriter(folder, identity, len(images), shard_size)
    if rank == 0:
        writer.open(main=True)
    barrier(state)
    if rank != 0:
        writer.open(main=False)
    todo = writer.todo(rank, world)
    batches = [list(writer.range(s))[b:b + batch_size] for s in todo for b in range(0, len(writer.range(s)), batch_size)]
    pending: dict[int, dict] = {}   # shard -> {key: its rows, filled batch by batch}
    rows = dict.fromkeys(todo, 0)
    for idx, batch in tqdm(ImageBatches(images, batch_size, workers, transform, batches=batches), desc=desc,
                           dynamic_ncols=True, disable=not batches):
        feats = pooled_maps(source, batch, idx, pools)
        release_memory()
        feats.update({name: t[idx] for name, t in (extra or {}).items()})
        s = int(idx[0]) // shard_size
        _fill(pending, s, writer.range(s), idx, feats)
        rows[s] += len(idx)
        if rows[s] == len(writer.range(s)):
            writer.write(s, pending.pop(s))
    barrier(state)
    if rank == 0:
        writer.finish(meta)
    barrier(state)
    return FeatureStore(folder)


def maps_in_store(source, images, folder: str | Path, identity: dict, batch_size: int, workers: int = 0, state=None,
                  desc: str = "features", transform=None) -> dict:
    """Full (unpooled) maps of `images` through the sharded store at `folder` (resumed or reused),
    each key as one array, in memory when it fits: shards are sized from one image's maps."""
    one = source.maps(torch.as_tensor(images[0])[None], indices=torch.zeros(1, dtype=torch.long))
    per_image = sum(m[0].numel() * 4 for m in one.values())   # float32 bytes of one image's maps
    store = extract_to_store(source, images, folder, identity, None, default_shard_size(per_image), batch_size,
                             workers, state=state, desc=desc, transform=transform)
    return in_memory({k: store.array(k) for k in store.keys})


def _fill(pending: dict, s: int, rows: range, idx, feats: dict) -> None:
    """Copy a batch's rows into shard s's tensors, allocated once at the shard's full size: one copy
    of a shard in memory (gathering batches and concatenating them held two)."""
    if s not in pending:
        pending[s] = {k: v.new_empty((len(rows), *v.shape[1:])) for k, v in feats.items()}
    where = torch.as_tensor(idx) - rows.start
    for k, v in feats.items():
        pending[s][k][where] = v
