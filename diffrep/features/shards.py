"""The sharded feature store: a folder of safetensors shards of a fixed number of images each, and a
manifest that lists them once all are written. Extraction is resumable and splits over processes.

    folder/store.json              what the features are (the source's identity, the data, n, shard size):
                                   written first; a later run with other settings is refused, naming them
    folder/shard-00000.safetensors images [0, shard_size): every key's rows, plus in its metadata the
                                   range, the store's identity digest and a SHA-256 of the tensor bytes
    folder/manifest.json           written last, by the main process, once every shard is complete

A run killed at any point (SIGKILL included) is continued by the same command: a shard is written
to a temporary name and renamed (`runs.atomic_path`), so a shard file is either whole or absent; one
that is damaged afterwards (truncated, overwritten, from another store) fails its checks, is named,
and is computed again. Process r of N computes the shards s with s mod N = r.

Readers memory-map the shards (`FeatureStore.array(key)`): rows are read when indexed, so a store
larger than RAM trains heads batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..errors import DiffrepError
from ..runs import atomic_path, read_json, write_json
from .cell import file_key, key_from_json, key_to_json

STORE_FORMAT = "diffrep-store/1"
NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
                "U8": np.uint8, "BOOL": np.bool_}


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes() if tensors[name].numel() else b"")
    return h.hexdigest()


def _differences(saved: dict, asked: dict, prefix: str = "") -> list[str]:
    """The settings (dotted names) whose values differ between two identity dicts."""
    out = []
    for k in sorted(set(saved) | set(asked)):
        a, b = saved.get(k), asked.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif json.dumps(a, default=str) != json.dumps(b, default=str):
            out.append(f"{prefix}{k} ({json.dumps(a, default=str)} there, {json.dumps(b, default=str)} now)")
    return out


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the offset its data starts at (the format: an 8-byte
    little-endian header length, the header, then the tensors' bytes)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise ValueError("header length out of range")
        header = json.loads(f.read(length))
    return header, 8 + length


class ShardWriter:
    """Writes a store's shards; `todo(rank, world)` says which shards this process still has to compute."""

    def __init__(self, folder: str | Path, identity: dict, n: int, shard_size: int):
        self.folder = Path(folder)
        self.identity, self.n, self.shard_size = json.loads(json.dumps(identity, default=str)), n, shard_size
        self.n_shards = -(-n // shard_size)
        self.spec = {"format": STORE_FORMAT, "identity": self.identity, "n": n, "shard_size": shard_size}
        self.digest = _digest(self.spec)

    def open(self, main: bool) -> None:
        """Check the folder's settings against ours (refusing a mismatch) and, on the main process,
        record them; call on every process, the main one first or alone before the others start."""
        path = self.folder / "store.json"
        if path.is_file():
            saved = read_json(path, "feature store settings")
            diff = _differences(saved, self.spec)
            if diff:
                raise DiffrepError(f"{self.folder} holds features made with other settings: {'; '.join(diff)}; "
                                   "use another --out, or delete the folder to extract again")
        elif main:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "manifest.json").unlink(missing_ok=True)
            write_json(path, self.spec)

    def range(self, s: int) -> range:
        return range(s * self.shard_size, min(self.n, (s + 1) * self.shard_size))

    def check_shard(self, s: int) -> str | None:
        """None when shard s is complete and belongs here, else what is wrong with it."""
        path = self.folder / shard_name(s)
        if not path.is_file():
            return "missing"
        try:
            header, start = read_header(path)
            meta = header.get("__metadata__", {})
            if meta.get("store") != self.digest:
                return "from another store"
            if [int(meta["start"]), int(meta["stop"])] != [self.range(s).start, self.range(s).stop]:
                return "holds another range of images"
            tensors = _load(path, header, start)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            return f"unreadable ({err})"
        if _tensor_digest(tensors) != meta.get("sha256"):
            return "damaged: its contents do not match their checksum"
        return None

    def todo(self, rank: int = 0, world: int = 1) -> list[int]:
        """This process's shards that are not complete, saying which were found damaged."""
        mine = list(range(rank, self.n_shards, world))
        problems = {s: self.check_shard(s) for s in mine}
        done = [s for s, p in problems.items() if p is None]
        for s, p in problems.items():
            if p not in (None, "missing"):
                print(f"note: {self.folder / shard_name(s)} is {p}; computing it again")
        if done and len(done) == len(mine):
            print(f"reusing cached features {self.folder} ({len(done)} complete shard(s))")
        elif done:
            print(f"resuming {self.folder}: {len(done)} of {len(mine)} shard(s) complete")
        return [s for s in mine if problems[s] is not None]

    def write(self, s: int, tensors: dict) -> None:
        """Shard s: {key (Cell or str): rows of images range(s)}; written whole or not at all."""
        rows = self.range(s)
        named = {file_key(k): v.contiguous() for k, v in tensors.items()}
        if any(len(v) != len(rows) for v in named.values()):
            raise ValueError(f"shard {s} needs {len(rows)} rows per key")
        meta = {"format": STORE_FORMAT, "store": self.digest, "start": str(rows.start), "stop": str(rows.stop),
                "sha256": _tensor_digest(named), "keys": json.dumps([key_to_json(k) for k in tensors])}
        with atomic_path(self.folder / shard_name(s)) as tmp:
            save_file(named, str(tmp), metadata=meta)

    def finish(self, meta: dict | None = None) -> Path:
        """The manifest (main process, after every process has written its shards)."""
        bad = {s: p for s in range(self.n_shards) if (p := self.check_shard(s)) is not None}
        if bad:
            raise DiffrepError(f"{self.folder}: shard(s) {', '.join(shard_name(s) for s in list(bad)[:3])} "
                               f"{'are' if len(bad) > 1 else 'is'} {next(iter(bad.values()))}; run the command again")
        keys = json.loads(read_header(self.folder / shard_name(0))[0]["__metadata__"]["keys"])
        return write_json(self.folder / "manifest.json", {**self.spec, "meta": meta or {}, "keys": keys,
                                                          "shards": [shard_name(s) for s in range(self.n_shards)]})


def _load(path: Path, header: dict, start: int) -> dict[str, torch.Tensor]:
    """Every tensor of a shard, memory-mapped (numpy), as torch tensors sharing that memory."""
    out = {}
    size = path.stat().st_size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if start + end > size:
            raise ValueError(f"{name} runs past the end of the file")
        dtype = NUMPY_DTYPES[info["dtype"]]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if count * np.dtype(dtype).itemsize != end - begin:
            raise ValueError(f"{name} has the wrong number of bytes")
        array = np.memmap(path, dtype=dtype, mode="c", offset=start + begin, shape=tuple(info["shape"])) if count \
            else np.zeros(info["shape"], dtype)
        out[name] = torch.from_numpy(array)
    return out


class ShardedArray:
    """One key's rows over every shard, memory-mapped: `len`, `shape`, and `array[index]` (an int, a
    slice, or a tensor of row indices) → a torch tensor holding just those rows."""

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, dtype=torch.long)
        flat = index.reshape(-1).numpy()
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        out = torch.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        for s in np.unique(shard):
            pick = np.nonzero(shard == s)[0]
            rows = flat[pick] - self.starts[s]
            out[torch.from_numpy(pick)] = torch.from_numpy(np.ascontiguousarray(self.parts[s].numpy()[rows]))
        return out.reshape(*index.shape, *self.shape[1:])

    def materialise(self) -> torch.Tensor:
        return torch.cat([p.clone() for p in self.parts])


class FeatureStore:
    """A complete store, read through its manifest: `keys`, `n`, `meta`, `array(key)`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.is_file():
            what = "is incomplete (its extraction did not finish: run the same command again to finish it)" \
                if (self.folder / "store.json").is_file() else "is not a feature store (no manifest.json)"
            raise DiffrepError(f"{self.folder} {what}")
        manifest = read_json(path, "feature store manifest")
        if manifest.get("format") != STORE_FORMAT:
            raise DiffrepError(f"{self.folder} was written by another version of diffrep ({manifest.get('format')}); "
                               "extract again")
        self.manifest, self.n, self.meta = manifest, manifest["n"], manifest["meta"]
        self.identity = manifest["identity"]
        self.keys = [key_from_json(k) for k in manifest["keys"]]
        self._shards: list[dict] | None = None

    def _open(self) -> list[dict]:
        if self._shards is None:
            shards = []
            for name in self.manifest["shards"]:
                path = self.folder / name
                try:
                    shards.append(_load(path, *read_header(path)))
                except (OSError, ValueError, KeyError) as err:
                    raise DiffrepError(f"{path} is damaged ({err}); run the extraction again to recompute it") from None
            self._shards = shards
        return self._shards

    def array(self, key) -> ShardedArray:
        name = file_key(key)
        shards = self._open()
        if name not in shards[0]:
            raise DiffrepError(f"{self.folder} holds no {name}; it holds {', '.join(map(file_key, self.keys))}")
        return ShardedArray([s[name] for s in shards])


def memory_budget() -> int:
    """Bytes of features heads may hold in RAM: a quarter of the machine's memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def as_tensor(x) -> torch.Tensor:
    """`x` as a tensor in memory: a memory-mapped `ShardedArray` is read whole; a tensor is returned as is."""
    return x.materialise() if isinstance(x, ShardedArray) else x


def in_memory(arrays: dict, budget: int | None = None) -> dict:
    """The arrays read into RAM when together they fit `budget` (default `memory_budget()`), else left
    memory-mapped (heads then read them batch by batch); the numbers are the same either way."""
    size = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
    if size <= (memory_budget() if budget is None else budget):
        return {k: as_tensor(a) for k, a in arrays.items()}
    print(f"note: {size / 2 ** 30:.1f} GiB of features exceed the memory budget; heads read them memory-mapped")
    return arrays
