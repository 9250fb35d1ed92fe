"""Files written whole or not at all: `atomic_path` yields a temporary name beside the target and
renames it into place once the block ends without error; and `cache_root`, where diffrep keeps what it
writes once and reuses. Kept apart from `runs` (which knows run folders and processes) so that any
module can use them without importing the rest."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def _is_temporary(name: str) -> bool:
    """Our temporary names (.NAME.tmp) and safetensors' own (.tmpXXXXXX, made beside the target)."""
    return name.startswith(".") and (name.endswith(TMP_SUFFIX) or name.startswith(".tmp"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path` to write a file (or a folder) at; once the block ends
    without error it replaces `path`; on any error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = _tmp_name(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():   # os.replace cannot put a folder over a non-empty one
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def cache_root() -> Path:
    """Where diffrep keeps what it writes once and reuses (the panoptic scenes, converted checkpoints):
    $DIFFREP_CACHE, else ~/.cache/diffrep."""
    return Path(os.environ.get("DIFFREP_CACHE", Path.home() / ".cache" / "diffrep"))
