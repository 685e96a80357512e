"""File helpers shared by export and runtime: the cache folder, sha256 with a stat-keyed memo, atomic writes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


def cache_root() -> Path:
    """Where replicas, exported artifacts and compiled-model caches live (TURBO_RUNTIME_CACHE overrides)."""
    env = os.environ.get("TURBO_RUNTIME_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "turbo-runtime"


_memo_lock = threading.Lock()


def _memo_path() -> Path:
    return cache_root() / "sha256-memo.json"


def _load_memo() -> dict:
    try:
        return json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}


def _stat_key(path: Path) -> str:
    # The change time too: a tool can set a file's modification time back after editing it, not its change time.
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of each file.

    Multi-GB weights are hashed once: the digest is remembered per (device, inode, size, modification and change
    time), so a file rewritten or edited in place is hashed again while an untouched one costs a stat.
    """
    memo = _load_memo()
    digests, new = [], {}
    for path in paths:
        path = Path(path).resolve()
        key = f"{path}|{_stat_key(path)}"
        digest = memo.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            digest = new[key] = h.hexdigest()
        digests.append(digest)
    if new:
        with _memo_lock:  # threads of this process hash at once (checked_cache); merge, not overwrite, their digests
            try:
                write_text_atomic(_memo_path(), json.dumps({**_load_memo(), **new}, indent=0, sort_keys=True))
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


_RECORD = ".sha256"


def _cache_entries(folder: Path) -> list[Path]:
    """What the engine wrote: every file but the lock (hidden) and our records."""
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != _RECORD]


@contextmanager
def checked_cache(folder: Path, recorder: Executor | None = None) -> Iterator[Path]:
    """A compile-cache folder whose entries are used only while they match the sha256 recorded when written.

    OpenVINO loads a cached blob with a changed byte without noticing and computes with it (a truncated one it
    refuses and compiles again). Entering, under a lock that keeps other processes from checking or writing the
    folder at the same time, removes every entry that no longer matches its record, or has none (its writer
    died, or predates the records): the engine compiles afresh and writes it again. Leaving without an error
    records the sha256 of what the engine wrote, then unlocks; in `recorder`'s thread when one is given, so that
    hashing a new multi-GB entry overlaps the caller's next compile (the lock is held until the records are
    written: other processes wait, and one that finds an entry without its record never sees it in between).
    """
    lock = _locked(folder)
    _used.add(folder.resolve())
    try:
        os.utime(lock.fileno())  # the folder's last use, for prune_cache
        entries = _cache_entries(folder)
        for entry, digest in zip(entries, sha256_files(entries)):
            recorded = _recorded(entry)
            if digest != recorded:
                if recorded is not None:
                    log.warning("compile cache entry %s was modified since it was written; compiling again", entry)
                entry.unlink()
        yield folder
    except BaseException:
        lock.close()
        raise
    if recorder is None:
        _record_and_unlock(folder, lock)
    else:
        recorder.submit(_record_and_unlock, folder, lock)


def clear_cache_folder(folder: Path) -> None:
    """Remove everything in a compile-cache folder but its lock (which the caller holds)."""
    for entry in folder.iterdir():
        if entry.name != ".lock":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _locked(folder: Path):
    """The folder's lock file, held (created with the folder if need be). A lock taken on a file that prune_cache
    removed meanwhile locks nothing: take the new one."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(folder / ".lock").st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        except FileNotFoundError:
            pass
        lock.close()


def _record_and_unlock(folder: Path, lock) -> None:
    try:
        entries = _cache_entries(folder)
        for entry, digest in zip(entries, sha256_files(entries)):
            if digest != _recorded(entry):
                write_text_atomic(entry.with_name(entry.name + _RECORD), digest + "\n")
    except OSError as e:  # an entry without its record is compiled again by the next start: slower, never wrong
        log.warning("could not record the compile cache entries of %s: %s", folder, e)
    finally:
        lock.close()


KEEP_DAYS = 30.0
_used: set[Path] = set()  # the folders this process has checked: never pruned by it, however long it has run


def keep_days() -> float:
    """How long a compile-cache folder no start has used is kept: TURBO_RUNTIME_CACHE_KEEP_DAYS, or 30 days."""
    from turbo_runtime.errors import InputError

    value = os.environ.get("TURBO_RUNTIME_CACHE_KEEP_DAYS", "").strip()
    if not value:
        return KEEP_DAYS
    try:
        days = float(value)
    except ValueError:
        days = -1.0
    if not days >= 0:  # NaN too
        raise InputError(f"TURBO_RUNTIME_CACHE_KEEP_DAYS must be a number of days >= 0 (or inf), not {value!r}")
    return days


def prune_cache(cache_dir: Path, days: float) -> list[Path]:
    """Remove the folders of `cache_dir` (one per component's files and settings, see checked_cache) that no
    start has used for `days`: re-exported or deleted artifacts leave theirs behind for good otherwise (1.4 GB
    for SD-Turbo's fast path). Folders this process uses, or another one holds locked, are left alone. Returns the
    folders removed."""
    removed = []
    limit = time.time() - days * 86400
    for folder in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        path = folder / ".lock"
        if folder.resolve() in _used:
            continue
        try:
            if path.stat().st_mtime >= limit:
                continue
            lock = open(path, "a")
        except OSError:  # not one of ours, or removed meanwhile
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(lock.fileno()).st_ino != path.stat().st_ino or path.stat().st_mtime >= limit:
                    continue  # used or removed between the first look and the lock
            except OSError:
                continue
            try:
                clear_cache_folder(folder)
                path.unlink()
            except OSError as e:
                log.warning("could not remove compile cache folder %s: %s", folder, e)
                continue
        try:
            folder.rmdir()
        except OSError:
            pass  # a start took the folder up again meanwhile, with a lock of its own
        removed.append(folder)
        log.info("removed compile cache folder %s: unused for %g days", folder, days)
    return removed


def _recorded(entry: Path) -> str | None:
    try:
        return entry.with_name(entry.name + _RECORD).read_text().strip()
    except FileNotFoundError:
        return None


_MADV_DONTNEED = 4


def release_mappings(folders: list[Path]) -> int:
    """Unmap from this process the resident pages of read-only file mappings under `folders` (Linux; else a no-op).

    An engine that reads weights through mmap may keep the mapping alive after converting the weights into its
    own buffers; the file's pages then count twice in resident memory although nothing reads them again.
    MADV_DONTNEED drops them from this process only: they stay in the page cache, so the next start reads them
    from memory, not from disk, and anything touching them again gets the file's bytes back at once. Writable
    mappings are left alone (dropping a private copy would lose its writes). Returns the bytes of the ranges
    advised.
    """
    import ctypes

    try:
        maps = Path("/proc/self/maps").read_text()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prefixes = tuple(str(Path(f).resolve()) + os.sep for f in folders)
    advised = 0
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(prefixes) and "w" not in fields[1]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if madvise(start, end - start, _MADV_DONTNEED) == 0:
                advised += end - start
    return advised


@contextmanager
def releasing_mappings(folders: list[Path], interval: float = 0.1) -> Iterator[None]:
    """Release the mappings under `folders` every `interval` seconds while the block runs, and once at its end.

    An engine converting mapped weights touches each page once, in order: releasing what it has read as it goes
    keeps the file's pages and the engine's copy from both being resident at the peak."""
    if not folders:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            release_mappings(folders)

    thread = threading.Thread(target=loop, name="release-mappings", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        release_mappings(folders)
