"""``distill cache verify`` and ``distill cache stats``: trust nothing, then count.

Why verify reads every byte: a flipped bit in a shard would silently train the student on a
wrong distribution. Each record's CRC32, its decoded shape and ids, the index's byte ranges
(records must tile the data file exactly) and duplicate ids across shards are all checked.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teachers.cache.format import CacheFormatError, decode_record
from teachers.cache.reader import CacheCorrupt, index_files, read_index, read_meta
from teachers.cache.writer import DATA_SUFFIX, TEMP_PREFIX


@dataclass
class VerifyReport:
    directory: str
    shards: int = 0
    samples: int = 0
    tokens: int = 0
    problems: list[str] = field(default_factory=list)  # the cache cannot be trusted
    warnings: list[str] = field(default_factory=list)  # harmless leftovers

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(directory: str | os.PathLike) -> VerifyReport:
    """Check every shard of a cache; problems make ``report.ok`` false."""
    directory = Path(directory)
    report = VerifyReport(str(directory))
    try:
        meta = read_meta(directory)
    except (FileNotFoundError, CacheFormatError, ValueError) as err:
        report.problems.append(f"meta: {err}")
        return report
    seen: dict[str, str] = {}
    for index_path in index_files(directory):
        report.shards += 1
        try:
            index = read_index(index_path)
        except CacheCorrupt as err:
            report.problems.append(str(err))
            continue
        shard = str(index.get("shard", index_path.with_suffix(DATA_SUFFIX).name))
        data_path = directory / shard
        if not data_path.is_file():
            report.problems.append(f"{index_path.name}: its data file {shard} is missing")
            continue
        size = data_path.stat().st_size
        if size != index.get("data_bytes"):
            report.problems.append(
                f"{shard}: {size} bytes on disk, the index says {index.get('data_bytes')}"
            )
        expected_offset = 0
        with open(data_path, "rb") as handle:
            for row in index["records"]:
                try:
                    sample_id, offset, length, crc, tokens = row
                except (TypeError, ValueError):
                    report.problems.append(f"{index_path.name}: malformed index row {row!r}")
                    continue
                where = f"{shard}: record {sample_id!r} at byte {offset}"
                if offset != expected_offset:
                    report.problems.append(f"{where}: expected offset {expected_offset}")
                expected_offset = offset + length
                handle.seek(offset)
                data = handle.read(length)
                if len(data) != length or zlib.crc32(data) != crc:
                    report.problems.append(f"{where}: checksum mismatch (corrupted bytes)")
                    continue
                try:
                    stored_id, sample = decode_record(data, meta)
                except CacheFormatError as err:
                    report.problems.append(f"{where}: {err}")
                    continue
                if stored_id != sample_id:
                    report.problems.append(f"{where}: the record holds id {stored_id!r}")
                if len(sample.response_ids) != tokens:
                    report.problems.append(
                        f"{where}: {len(sample.response_ids)} tokens, the index says {tokens}"
                    )
                if meta.teacher_tokens:
                    problem = span_problem(sample)
                    if problem:
                        report.problems.append(f"{where}: {problem}")
                if sample_id in seen:
                    report.warnings.append(
                        f"{sample_id!r} is stored twice ({seen[sample_id]} and {shard}); "
                        "readers use the first"
                    )
                    continue
                seen[sample_id] = shard
                report.samples += 1
                report.tokens += tokens
        if expected_offset != size and size == index.get("data_bytes"):
            report.problems.append(f"{shard}: records end at {expected_offset} of {size} bytes")
    indexed = {p.with_suffix(DATA_SUFFIX).name for p in index_files(directory)}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(TEMP_PREFIX):
            report.warnings.append(f"{path.name}: unfinished temp file (ignored by readers)")
        elif path.suffix == DATA_SUFFIX and path.name not in indexed:
            report.warnings.append(f"{path.name}: data file without an index (ignored by readers)")
    return report


def span_problem(sample) -> str | None:
    """Why a teacher-token record's spans cannot be the tokens of its text (None: they can):
    each span [start, end) inside the text, starts and ends never going back."""
    spans, text = sample.spans, sample.text
    if text is None:
        return "a teacher-token record without its text"
    if len(spans) == 0:
        return None
    starts, ends = spans[:, 0], spans[:, 1]
    if (starts > ends).any() or (np.diff(starts) < 0).any() or (np.diff(ends) < 0).any():
        return "token spans go backwards"
    if int(ends.max()) > len(text):
        return f"a token span ends at character {int(ends.max())} of a {len(text)}-character text"
    return None


@dataclass
class CacheStats:
    directory: str
    samples: int
    shards: int
    tokens: int
    k: int
    data_bytes: int
    index_bytes: int
    id_bits: int
    logprob_bits: int
    mode: str
    teacher: str
    version: int = 3
    logprob_step: float | None = None  # version 3: the top-k logprobs' rounding step
    codec: str | None = None  # version 3: the top-k block's codec (meta topk_coding.name)

    @property
    def entries(self) -> int:
        return self.tokens * self.k

    @property
    def bytes_per_token(self) -> float:
        return self.data_bytes / self.tokens if self.tokens else 0.0

    @property
    def bytes_per_entry(self) -> float:
        return self.data_bytes / self.entries if self.entries else 0.0

    @property
    def payload_bytes_per_entry(self) -> float | None:
        """Bytes of one top-k entry alone (packed id + packed logprob), without record overhead;
        None in version 3, whose entries are range-coded (no fixed width)."""
        return (self.id_bits + self.logprob_bits) / 8 if self.version < 3 else None

    def lines(self) -> list[str]:
        if self.payload_bytes_per_entry is None:
            coding = (f"range-coded ids and logprobs at a {self.logprob_step:g}-nat step, codec "
                      f"{self.codec}, format version {self.version}")
        else:
            coding = (f"{self.id_bits}-bit ids, {self.logprob_bits}-bit logprobs = "
                      f"{self.payload_bytes_per_entry:.3f} B/entry, format version {self.version}")
        entries = max(self.entries, 1)
        return [
            f"cache        {self.directory}",
            f"teacher      {self.teacher} ({self.mode} mode, top-{self.k})",
            f"samples      {self.samples} in {self.shards} shard(s)",
            f"tokens       {self.tokens} (mean {self.tokens / max(self.samples, 1):.1f} per sample)",
            f"top-k        {self.entries} entries ({coding})",
            f"bytes        {self.data_bytes} data + {self.index_bytes} index",
            f"per token    {self.bytes_per_token:.2f} B",
            f"per entry    {self.bytes_per_entry:.3f} B (all data bytes / top-k entries); "
            f"{(self.data_bytes + self.index_bytes) / entries:.3f} B with the index",
        ]


def cache_stats(directory: str | os.PathLike) -> CacheStats:
    """Counts and sizes from the indexes (fast: no sample is decoded)."""
    directory = Path(directory)
    meta = read_meta(directory)
    samples = tokens = data_bytes = index_bytes = shards = 0
    seen: set[str] = set()
    for index_path in index_files(directory):
        index = read_index(index_path)
        shards += 1
        index_bytes += index_path.stat().st_size
        data_bytes += int(index.get("data_bytes", 0))
        for sample_id, _offset, _length, _crc, count in index["records"]:
            if sample_id not in seen:
                seen.add(sample_id)
                samples += 1
                tokens += count
    return CacheStats(
        directory=str(directory), samples=samples, shards=shards, tokens=tokens, k=meta.k,
        data_bytes=data_bytes, index_bytes=index_bytes, id_bits=meta.id_bits,
        logprob_bits=meta.logprob_bits, mode=meta.mode, teacher=meta.teacher, version=meta.version,
        logprob_step=meta.topk_codec.step if meta.version >= 3 else None,
        codec=meta.topk_coding.get("name") if meta.version >= 3 else None,
    )
