"""File helpers shared by export and runtime: the cache folder, sha256 with a stat-keyed memo, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

_CHUNK = 8 << 20


def cache_root() -> Path:
    """Where replicas, exported artifacts and compiled-model caches live (TURBO_RUNTIME_CACHE overrides)."""
    env = os.environ.get("TURBO_RUNTIME_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "turbo-runtime"


def _memo_path() -> Path:
    return cache_root() / "sha256-memo.json"


def _load_memo() -> dict:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of each file.

    Multi-GB weights are hashed once: the digest is remembered per (device, inode, size, mtime), so a file
    rewritten or edited in place is hashed again while an untouched one costs a stat.
    """
    memo = _load_memo()
    digests, changed = [], False
    for path in paths:
        path = Path(path).resolve()
        key = f"{path}|{_stat_key(path)}"
        digest = memo.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            digest = memo[key] = h.hexdigest()
            changed = True
        digests.append(digest)
    if changed:
        try:
            write_text_atomic(_memo_path(), json.dumps(memo, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only cache only costs re-hashing next time
    return digests


def sha256_file(path: Path) -> str:
    return sha256_files([path])[0]


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
