"""Run folders and result files, one mechanism for every command.

- Output paths are checked before any work: a folder that is a file, cannot be made or is not
  writable, or a file name that is a folder, is refused with one line saying which.
- A run folder is locked while a command writes to it (`locked`): a second command into the same
  folder is refused instead of mixing its settings with the first one's.
- Every file is written atomically by `atomic_path` (`diffrep.files`): under a temporary name beside it, renamed into
  place once whole, removed if writing fails. A SIGKILL cannot run cleanup, so stale temporary files
  (`.NAME.tmp`, and safetensors' own `.tmpXXXXXX`) are swept, in the whole folder, when it is next
  opened for writing.
- Results: `config.json` (the command's settings) and `<command>.json`, which starts with the same
  header in every command: method, model, data, timing_s (seconds, a dict with at least "total").
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import resource
from pathlib import Path

import torch

from .core.runtime import processes
from .errors import DiffrepError

from .files import _is_temporary, _remove, atomic_path


def write_json(path: str | Path, obj) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2, ensure_ascii=False))
    return Path(path)


def save_torch(obj, path: str | Path) -> Path:
    """torch.save, flushed to disk before the rename (a checkpoint must survive a crash)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def jsonable(obj):
    """Dataclasses as dicts, paths as strings, tuples as lists: what every results file holds."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "as_json"):
        return obj.as_json()
    return obj


def read_json(path: str | Path, what: str) -> dict:
    """A JSON file this tool wrote; a damaged one is named, with what to do about it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffrepError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DiffrepError(f"{what} {path} is damaged ({err}); delete it and run the command that writes it again") from None


# ----------------------------------------------------------------------------- output paths

def output_folder(path: str | Path, what: str = "--out") -> Path:
    """An output folder, created if needed and checked writable; stale temporary files are swept."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DiffrepError(f"{what} {path} is a file, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiffrepError(f"cannot create the {what} folder {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DiffrepError(f"the {what} folder {path} is not writable")
    for stale in [p for p in path.rglob(".*") if _is_temporary(p.name)]:   # left by a killed run
        _remove(stale)
    return path


def output_file(path: str | Path, what: str = "--out", suffix: str | None = None) -> Path:
    """An output file name: not a folder, with the expected suffix, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise DiffrepError(f"{what} {path} is a folder; give a file name")
    if suffix is not None and path.suffix.lower() != suffix:
        raise DiffrepError(f"{what} {path} must end in {suffix}")
    output_folder(path.parent, f"{what} file's")
    return path


@contextlib.contextmanager
def locked(folder: str | Path):
    """Hold an exclusive lock on a run folder while a command writes to it; a second command into the
    same folder is refused at once (flock: released by the kernel if the holder dies). A folder this
    call created is removed again if the command fails before writing anything into it."""
    created = not Path(folder).exists()
    folder = output_folder(folder)
    lock_path = folder / ".lock"
    handle = open(lock_path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DiffrepError(f"another diffrep command is writing to {folder}; wait for it to finish or choose "
                           "another --out") from None
    finished = False
    try:
        yield folder
        finished = True
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()
        if not finished and created and not any(folder.iterdir()):
            folder.rmdir()


@contextlib.contextmanager
def run_folder(folder: str | Path, state=None):
    """The run folder as this process sees it: locked (`locked`) by the main process or a lone one;
    the other processes of a torchrun job (accelerate's PartialState `state`) write their share
    into it unlocked while the main process holds the lock."""
    if state is not None and not state.is_main_process:
        yield Path(folder)
        return
    with locked(folder) as folder:
        yield folder


def in_run_folder(out: str | Path, device: str, body):
    """body(folder, device, state) inside run folder `out` (`run_folder`), with this process's
    accelerate state and device (`core.processes`): how every command that may run under torchrun starts."""
    state, dev = processes(device)
    with run_folder(out, state) as folder:
        return body(folder, dev, state)


# ----------------------------------------------------------------------------- results

def header(method: str, model: str, data: str, timing_s: dict) -> dict:
    """The first keys of every `<command>.json`."""
    return {"method": method, "model": str(model), "data": str(data), "timing_s": timing_s}


def write_results(out: Path, command: str, result: dict, config=None) -> Path:
    """`<command>.json` (and `config.json` when a config is given) in the run folder `out`."""
    if config is not None:
        write_json(out / "config.json", config)
    return write_json(out / f"{command}.json", result)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
