"""The soft-target cache (format in README.md here): write shards, read by id, verify.

The trainer's entry point is ``open_cache(directory).get(sample_id)``, which returns a
``CachedSample(response_ids, topk_ids, topk_logprobs, rationale, text)``.
"""

from teachers.cache.format import CachedSample, CacheFormatError, CacheMeta, LogprobCodec
from teachers.cache.reader import CacheCorrupt, TeacherCache, open_cache, read_meta
from teachers.cache.verify import cache_stats, verify_cache
from teachers.cache.writer import CacheMetaMismatch, CacheWriter

__all__ = [
    "CacheCorrupt",
    "CacheFormatError",
    "CacheMeta",
    "CacheMetaMismatch",
    "CacheWriter",
    "CachedSample",
    "LogprobCodec",
    "TeacherCache",
    "cache_stats",
    "open_cache",
    "read_meta",
    "verify_cache",
]
