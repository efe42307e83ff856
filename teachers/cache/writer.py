"""Appends samples to a cache folder in shards that become visible only when finished.

Why temp + rename: a worker killed mid-shard must leave nothing a reader trusts. Records go to
``.tmp-<shard>.bin``; finishing a shard renames it to ``<shard>.bin`` and then writes
``<shard>.idx`` the same way. A reader only opens shards that have an index, so the index's
rename is the commit. Shard names carry host, pid and a random tag, so many workers (on many
machines sharing a file system) never collide. A shard is also finished after
``max_shard_seconds``, which bounds the work a crash can lose.

Two jobs on one folder would both compute the same ids "still to do" and store them twice, so a
job holds the folder's lock (``cache_lock``) from reading what is stored to its last shard.
A full disk (ENOSPC) while a shard is written fails that shard only: its temp file is removed and
the shards finished before it stay readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from distill.errors import DistillError, DistillFailure
from teachers.cache.format import CachedSample, CacheMeta, encode_record

META_NAME = "meta.json"
INDEX_SUFFIX = ".idx"
DATA_SUFFIX = ".bin"
TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"


class CacheWriteError(DistillFailure, OSError):
    """A shard could not be written (e.g. the disk is full); earlier shards are intact."""


class CacheMetaMismatch(DistillError, ValueError):
    """The folder holds a cache made with other settings: mixing would corrupt the targets."""


def worker_tag() -> str:
    host = socket.gethostname().replace("-", "_").replace(".", "_") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def ensure_meta(directory: Path, meta: CacheMeta) -> None:
    """Write ``meta.json`` if the folder has none; refuse if it has a different one.

    Two workers may start at once: the meta is written to a temp file and hard-linked into
    place, which fails for the loser, who then compares instead of overwriting.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / META_NAME
    if not target.exists():
        temp = directory / f"{TEMP_PREFIX}meta-{worker_tag()}.json"
        _write_durably(temp, meta.to_json().encode())
        try:
            os.link(temp, target)
            _fsync_dir(directory)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    existing = CacheMeta.from_json(target.read_text(encoding="utf-8"))
    check_same_settings(directory, existing, meta)


def in_folder_format(directory, cached: CacheMeta, wanted: CacheMeta) -> CacheMeta:
    """``wanted`` in the stored cache's format (version and its top-k models), after checking
    that every setting agrees (CacheMetaMismatch otherwise).

    Why: the format is how rows are stored, not what they are; a cache begun in an older
    readable version keeps growing in it rather than being refused or mixed.
    """
    adopted = dataclasses.replace(wanted, version=cached.version, topk_coding=cached.topk_coding)
    check_same_settings(directory, cached, adopted)
    return adopted


def check_same_settings(directory, cached: CacheMeta, wanted: CacheMeta) -> None:
    """CacheMetaMismatch listing every setting ``cached`` and ``wanted`` differ in, if any."""
    problems = cached.differences(wanted)
    if problems:
        raise CacheMetaMismatch(
            f"{directory} holds a cache made with other settings (cached != this run):\n  "
            + "\n  ".join(problems)
            + "\nuse another teacher.cache_dir, or delete this cache to rebuild it"
        )


@contextlib.contextmanager
def cache_lock(directory: str | os.PathLike, log: TextIO | None = None) -> Iterator[bool]:
    """Hold the exclusive writer lock of a cache folder; yields whether it had to wait.

    ``flock`` on ``<directory>/.lock``: the kernel drops it when the holder dies (even by
    SIGKILL), so a lock is never stale. The file names its holder for the waiting message and is
    removed on release (unlinked while still locked; a waiter that then locks the unlinked file
    sees that and retries on a fresh one).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another job"
            if log is not None:
                print(f"waiting: {directory} is being written by {holder}; this job continues "
                      "with what that one leaves to do", file=log, flush=True)
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as we waited on it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield waited
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


class CacheWriter:
    """Adds samples to a cache; use as a context manager so the last shard is finished."""

    def __init__(
        self,
        directory: str | os.PathLike,
        meta: CacheMeta,
        shard_size: int = 4096,
        max_shard_seconds: float = 600.0,
    ):
        self.directory = Path(directory)
        self.meta = meta
        self.shard_size = shard_size
        self.max_shard_seconds = max_shard_seconds
        self.worker = worker_tag()
        ensure_meta(self.directory, meta)
        remove_stale_temp_files(self.directory)
        self._serial = 0
        self._file = None
        self._records: list[list] = []
        self._opened_at = 0.0
        self._offset = 0
        self._added: set[str] = set()
        self.shards_written: list[str] = []

    # -- public
    def add(self, sample_id: str, sample: CachedSample) -> int:
        """Append one sample; returns its record size in bytes."""
        if sample_id in self._added:
            raise ValueError(f"sample {sample_id!r} was already added by this writer")
        record = encode_record(sample_id, sample, self.meta)
        if self._file is None:
            self._open_shard()
        try:
            self._file.write(record)
        except OSError as err:
            self._abandon_shard()
            raise CacheWriteError(
                f"{self.directory}: cannot write the shard ({err.strerror or err}); the "
                f"{len(self.shards_written)} shard(s) finished before it are kept, the samples "
                "of this one will be redone by a rerun"
            ) from err
        tokens = len(sample.response_ids)
        self._records.append([sample_id, self._offset, len(record), zlib.crc32(record), tokens])
        self._offset += len(record)
        self._added.add(sample_id)
        age = time.monotonic() - self._opened_at
        if len(self._records) >= self.shard_size or age >= self.max_shard_seconds:
            self.finish_shard()
        return len(record)

    def finish_shard(self) -> None:
        """Make the current shard visible to readers (no-op when nothing is pending)."""
        if self._file is None:
            return
        name = self._shard_name
        index = {
            "shard": f"{name}{DATA_SUFFIX}",
            "data_bytes": self._offset,
            "fields": ["id", "offset", "length", "crc32", "tokens"],
            "records": self._records,
        }
        temp_index = self.directory / f"{TEMP_PREFIX}{name}{INDEX_SUFFIX}"
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            # The index is written before the data is renamed: a full disk fails here, while
            # nothing of this shard is visible yet.
            _write_durably(temp_index, json.dumps(index, separators=(",", ":")).encode())
        except OSError as err:
            self._abandon_shard()
            temp_index.unlink(missing_ok=True)
            raise CacheWriteError(
                f"{self.directory}: cannot finish shard {name} ({err.strerror or err}); the "
                f"{len(self.shards_written)} shard(s) finished before it are kept, the samples "
                "of this one will be redone by a rerun"
            ) from err
        self._file.close()
        self._file = None
        os.replace(self.directory / f"{TEMP_PREFIX}{name}{DATA_SUFFIX}", self.directory / f"{name}{DATA_SUFFIX}")
        os.replace(temp_index, self.directory / f"{name}{INDEX_SUFFIX}")
        _fsync_dir(self.directory)
        self.shards_written.append(name)
        self._records = []

    def close(self) -> None:
        self.finish_shard()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        # Records already written are complete, so an exception still commits them.
        self.close()

    def _abandon_shard(self) -> None:
        """Drop the shard being written (its samples were never visible); forget its ids."""
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None
        (self.directory / f"{TEMP_PREFIX}{self._shard_name}{DATA_SUFFIX}").unlink(missing_ok=True)
        self._added -= {record[0] for record in self._records}
        self._records = []

    # -- internals
    def _open_shard(self) -> None:
        self._serial += 1
        self._shard_name = f"shard-{self.worker}-{self._serial:05d}"
        path = self.directory / f"{TEMP_PREFIX}{self._shard_name}{DATA_SUFFIX}"
        self._file = open(path, "xb")  # noqa: SIM115 - closed in finish_shard
        self._offset = 0
        self._records = []
        self._opened_at = time.monotonic()


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp and orphan shard files of dead workers on this host (never live ones)."""
    host = socket.gethostname().replace("-", "_").replace(".", "_") or "host"
    removed = []
    for path in directory.iterdir():
        name = path.name.removeprefix(TEMP_PREFIX).removeprefix("meta-").removeprefix("shard-")
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit():
            continue
        temp = path.name.startswith(TEMP_PREFIX)
        orphan = path.suffix == DATA_SUFFIX and not path.with_suffix(INDEX_SUFFIX).exists()
        if (temp or orphan) and not _pid_alive(int(parts[1])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
