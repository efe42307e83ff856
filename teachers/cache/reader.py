"""Reads one sample by id from a cache folder: index lookup, one ``pread``, checksum, decode.

Why not load shards whole: a training step needs a handful of samples out of millions, spread
over hundreds of shards. Only the small JSON indexes are held in memory; sample bytes are read
on demand with ``os.pread``, which is thread-safe, and file handles are reopened after a fork
(DataLoader workers) so no two processes share a file offset.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from teachers.cache.format import CachedSample, CacheFormatError, CacheMeta, decode_record
from teachers.cache.writer import INDEX_SUFFIX, META_NAME, TEMP_PREFIX


class CacheCorrupt(CacheFormatError):
    """A record's bytes do not match its checksum or its index entry."""


@dataclass(frozen=True)
class IndexEntry:
    shard: str
    offset: int
    length: int
    crc32: int
    tokens: int


def read_meta(directory: str | os.PathLike) -> CacheMeta:
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a teacher cache (no {META_NAME})")
    return CacheMeta.from_json(path.read_text(encoding="utf-8"))


def index_files(directory: Path) -> list[Path]:
    """Finished shards' indexes, in a stable order."""
    return sorted(p for p in directory.glob(f"*{INDEX_SUFFIX}") if not p.name.startswith(TEMP_PREFIX))


def read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheCorrupt(f"{path.name}: unreadable index ({err})") from None
    if not isinstance(index, dict) or not isinstance(index.get("records"), list):
        raise CacheCorrupt(f"{path.name}: index has no record list")
    return index


class TeacherCache:
    """A read-only view of a cache folder: ``get(sample_id)`` returns a CachedSample."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        self._entries: dict[str, IndexEntry] = {}
        self.duplicates: list[tuple[str, str]] = []  # (sample id, shard holding the extra copy)
        for path in index_files(self.directory):
            index = read_index(path)
            shard = str(index.get("shard", path.with_suffix(".bin").name))
            for row in index["records"]:
                sample_id, offset, length, crc, tokens = row
                if sample_id in self._entries:
                    self.duplicates.append((sample_id, shard))
                    continue
                self._entries[sample_id] = IndexEntry(shard, offset, length, crc, tokens)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def ids(self) -> set[str]:
        return set(self._entries)

    def entry(self, sample_id: str) -> IndexEntry:
        try:
            return self._entries[sample_id]
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in the cache {self.directory}") from None

    def get(self, sample_id: str) -> CachedSample:
        """(response_ids, topk_ids, topk_logprobs, rationale, text) of one sample."""
        entry = self.entry(sample_id)
        data = self.read_bytes(entry)
        if zlib.crc32(data) != entry.crc32:
            raise CacheCorrupt(f"{entry.shard}: record {sample_id!r} fails its checksum")
        stored_id, sample = decode_record(data, self.meta)
        if stored_id != sample_id:
            raise CacheCorrupt(f"{entry.shard}: index says {sample_id!r}, record holds {stored_id!r}")
        return sample

    def read_bytes(self, entry: IndexEntry) -> bytes:
        data = os.pread(self._fd(entry.shard), entry.length, entry.offset)
        if len(data) != entry.length:
            raise CacheCorrupt(f"{entry.shard}: record at {entry.offset} is cut short")
        return data

    def total_tokens(self) -> int:
        return sum(e.tokens for e in self._entries.values())

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Pickled into DataLoader workers: file descriptors do not travel.
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def _fd(self, shard: str) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors share offsets; reopen
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.directory / shard, os.O_RDONLY)
        return fd


def open_cache(directory: str | os.PathLike) -> TeacherCache:
    """Open a cache folder for reading (indexes only; sample bytes are read on ``get``)."""
    return TeacherCache(directory)
