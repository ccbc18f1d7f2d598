"""An on-disk cache for things a run can rebuild but should not have to: pre-trained feature
encoders, in-domain classifiers. Entries are directories named by a content hash, written
atomically (built in a temporary sibling, then renamed), so a crash never leaves a broken entry.

Feature encoders may also ship inside the package (``drifting/weights/<kind>/<key>``, made by
``drifting train-mae --train-preset NAME --ship``): an entry found there is used as a cache hit, so the
main job spends its time on the generator. The in-domain classifier of the metrics never ships: every
user trains their own judge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_root() -> Path:
    """``$DRIFTING_CACHE``, else ``~/.cache/drifting``."""
    return Path(os.environ.get("DRIFTING_CACHE") or Path.home() / ".cache" / "drifting")


# the cache kinds that may ship inside the package (never "classifier", the metrics' judge)
SHIPPED_KINDS = ("mae",)


def shipped_root() -> Path:
    """The package's own read-only entries: ``drifting/weights``."""
    return Path(__file__).resolve().parent / "weights"


def content_key(*parts) -> str:
    """A hex key over JSON-able values and numpy arrays (their bytes, dtype and shape)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cached_dir(kind: str, key: str, build: Callable[[Path], object], *, rebuild: bool = False) -> Path:
    """The package's shipped entry ``shipped_root()/kind/key`` when there is one (kinds of
    :data:`SHIPPED_KINDS`), else ``cache_root()/kind/key``, made by ``build(dir)`` unless a complete entry
    exists. ``rebuild``: ignore both and build a fresh cache entry.

    ``build`` works in ``cache_root()/kind/<key>.partial``, where a trainer keeps its checkpoint: a build
    killed midway resumes there the next time (the checkpoint is dropped once the entry is complete).
    Processes asking for the same entry at once take turns (a lock file beside it): the second finds the
    first's entry."""
    shipped = shipped_root() / kind / key
    if kind in SHIPPED_KINDS and not rebuild and (shipped / "config.json").is_file():
        return shipped
    entry = cache_root() / kind / key
    if (entry / ".complete").is_file() and not rebuild:
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(entry.with_name(f"{key}.lock")):
        if (entry / ".complete").is_file() and not rebuild:  # built by another process meanwhile
            return entry
        part = entry.with_name(f"{key}.partial")
        if rebuild:
            shutil.rmtree(part, ignore_errors=True)
        build(part)
        (part / "checkpoint.pt").unlink(missing_ok=True)  # the optimizer's state: not part of the entry
        (part / ".complete").touch()
        shutil.rmtree(entry, ignore_errors=True)  # an incomplete leftover, or the entry being rebuilt
        part.rename(entry)
    return entry


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` for the block (POSIX ``flock``; no lock where there is none)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
