"""The soft-target cache: packing, quantisation error, round trips, atomicity, verify, refusal."""

from __future__ import annotations

import multiprocessing
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from teachers.cache import (
    CacheCorrupt,
    CachedSample,
    CacheMeta,
    CacheMetaMismatch,
    CacheWriter,
    LogprobCodec,
    cache_stats,
    open_cache,
    verify_cache,
)
from teachers.cache.format import (
    CacheFormatError,
    decode_record,
    encode_record,
    id_bits_for,
    pack_uints,
    packed_size,
    unpack_uints,
)

VOCAB = 128256  # Llama-3: 17-bit ids


def make_meta(**changes) -> CacheMeta:
    fields = dict(
        teacher="t", teacher_revision=None, tokenizer_fingerprint="fp", target_tokenizer_fingerprint="fp",
        mode="score", k=8, logprob_mode="raw_logprobs", temperature=1.0, prompt_template_hash="h",
        vocab_size=VOCAB,
    )
    return CacheMeta(**{**fields, **changes})


def realistic_topk(rng: np.random.Generator, length: int, k: int, vocab: int = VOCAB):
    """Top-k rows of softmax(random logits): sorted, peaked like a language model's."""
    logits = rng.standard_normal((length, vocab)).astype(np.float32) * 3.0
    logits[np.arange(length), rng.integers(0, vocab, length)] += 12.0
    logprobs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    ids = np.argsort(-logprobs, axis=1)[:, :k]
    return ids.astype(np.int64), np.take_along_axis(logprobs, ids, 1).astype(np.float32)


def make_sample(rng, length=6, k=8, rationale=None, text="hello") -> CachedSample:
    ids, logprobs = realistic_topk(rng, length, k, vocab=2048)
    ids = ids * 61 % VOCAB  # spread the ids over the whole 17-bit range
    return CachedSample(rng.integers(0, VOCAB, length), ids, logprobs, rationale, text)


def assert_same(a: CachedSample, b: CachedSample, meta: CacheMeta) -> None:
    np.testing.assert_array_equal(a.response_ids, b.response_ids)
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=meta.max_logprob_error + 4e-6)
    assert (a.rationale, a.text) == (b.rationale, b.text)


# ------------------------------------------------------------------------------ bit packing
@pytest.mark.parametrize("bits", [1, 5, 12, 17, 31, 32])
def test_pack_round_trip_at_every_width(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, 1001, dtype=np.uint64).astype(np.int64)
    values[:2] = [0, 2**bits - 1]  # both extremes
    packed = pack_uints(values, bits)
    assert len(packed) == packed_size(1001, bits) == (1001 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_uints(packed, bits, 1001), values)


def test_pack_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match=r"2\*\*17"):
        pack_uints(np.array([VOCAB, 2**17]), 17)
    with pytest.raises(ValueError):
        pack_uints(np.array([-1]), 17)


def test_id_bits_is_ceil_log2_vocab():
    assert [id_bits_for(v) for v in (1, 2, 3, 49152, 128256, 2**17, 2**17 + 1)] == [1, 1, 2, 16, 17, 17, 18]


# ----------------------------------------------------------------------------- quantisation
def test_logprob_error_is_bounded_by_half_a_step():
    codec = LogprobCodec()
    values = np.linspace(-40, 0, 100_003)
    error = np.abs(codec.decode(codec.encode(values)) - values)
    assert error.max() <= codec.max_error + 4e-6  # + float32 rounding of the decoded value
    assert codec.max_error < 0.005  # documented: 12 bits over [-40, 0]


def test_logprob_quantisation_on_realistic_topk_meets_the_goal():
    """Goal (issue C): at most 1.5 B per logprob at <= 0.01 nats mean absolute error."""
    codec = LogprobCodec()
    _, logprobs = realistic_topk(np.random.default_rng(0), 200, 64, vocab=4096)
    error = np.abs(codec.decode(codec.encode(logprobs)) - logprobs)
    assert codec.bits / 8 <= 1.5
    assert error.mean() <= 0.01
    assert 0.001 < error.mean() < 0.0035  # uniform rounding error: step / 4 ~ 0.0024


def test_logprobs_below_the_floor_are_clamped_and_nan_refused():
    codec = LogprobCodec()
    decoded = codec.decode(codec.encode(np.array([-9999.0, -np.inf, 0.0])))
    np.testing.assert_allclose(decoded, [-40.0, -40.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.array([np.nan]))


# --------------------------------------------------------------------------------- records
def test_record_round_trip_and_size_version_2():
    meta = make_meta(version=2)
    rng = np.random.default_rng(1)
    sample = make_sample(rng, length=7, rationale="because <think>", text="héllo")
    data = encode_record("id-ü", sample, meta)
    sample_id, back = decode_record(data, meta)
    assert sample_id == "id-ü"
    assert_same(sample, back, meta)
    packed = packed_size(7, 17) + packed_size(56, 17) + packed_size(56, 12) + packed_size(7, 12)
    assert len(data) == 12 + len("id-ü".encode()) + packed + 4 + len("héllo".encode()) + 4 + 15


def test_rest_mass_is_stored_from_the_unrounded_logprobs():
    """A peaked row whose rounded top-k mass reaches 1: the stored rest keeps the true mass."""
    meta = make_meta(k=2)
    true = np.array([[np.log(0.95), np.log(0.0499)]], dtype=np.float32)  # rest 1e-4
    rounded_top1 = np.exp(meta.codec.decode(meta.codec.encode(true[0, :1])))[0]
    sample = CachedSample(np.array([5]), np.array([[5, 9]]), true)
    _, back = decode_record(encode_record("x", sample, meta), meta)
    kept_after_rounding = np.exp(back.topk_logprobs).sum()
    assert rounded_top1 > 0.95 and kept_after_rounding > 1 - 1e-4  # 1 - sum gives ~no rest
    assert back.rest_logprobs.shape == (1,)
    assert abs(float(back.rest_logprobs[0]) - np.log(1e-4)) <= meta.codec.max_error + 1e-4


def test_version_1_caches_stay_readable(tmp_path):
    """A cache written before the rest block (format version 1) reads back, rest None."""
    meta = make_meta(version=1)
    sample = make_sample(np.random.default_rng(5))
    with CacheWriter(tmp_path, meta) as writer:
        writer.add("a", sample)
    data = encode_record("a", sample, meta)
    assert len(data) == len(encode_record("a", sample, make_meta(version=2))) - packed_size(6, 12)
    with open_cache(tmp_path) as cache:
        back = cache.get("a")
    assert cache.meta.version == 1 and back.rest_logprobs is None
    assert_same(sample, back, meta)


def test_record_keeps_none_and_empty_texts_apart():
    meta = make_meta()
    sample = make_sample(np.random.default_rng(2), rationale="", text=None)
    _, back = decode_record(encode_record("x", sample, meta), meta)
    assert back.rationale == "" and back.text is None


def test_record_shape_errors_are_refused():
    meta = make_meta()
    sample = make_sample(np.random.default_rng(3))
    with pytest.raises(ValueError, match="k=8"):
        encode_record("x", sample._replace(topk_ids=sample.topk_ids[:, :4],
                                           topk_logprobs=sample.topk_logprobs[:, :4]), meta)
    with pytest.raises(ValueError, match="shapes disagree"):
        encode_record("x", sample._replace(response_ids=sample.response_ids[:3]), meta)
    with pytest.raises(CacheFormatError, match="truncated"):
        decode_record(encode_record("x", sample, meta)[:-20], meta)


# ------------------------------------------------------------------------- writer + reader
def write_cache(directory: Path, count: int, shard_size: int = 3, seed: int = 0, meta=None):
    meta = meta or make_meta()
    rng = np.random.default_rng(seed)
    samples = {f"s{i}": make_sample(rng, length=1 + i % 5, rationale=f"r{i}" if i % 2 else None)
               for i in range(count)}
    with CacheWriter(directory, meta, shard_size=shard_size) as writer:
        for sample_id, sample in samples.items():
            writer.add(sample_id, sample)
    return meta, samples


def test_round_trip_over_several_shards(tmp_path):
    meta, samples = write_cache(tmp_path, 10, shard_size=3)
    assert len(list(tmp_path.glob("shard-*.idx"))) == 4  # 3 + 3 + 3 + 1
    with open_cache(tmp_path) as cache:
        assert len(cache) == 10 and cache.ids() == set(samples)
        for sample_id in ["s9", "s0", "s4"]:
            assert_same(cache.get(sample_id), samples[sample_id], meta)
        assert cache.total_tokens() == sum(len(s.response_ids) for s in samples.values())
        with pytest.raises(KeyError, match="'nope' is not in the cache"):
            cache.get("nope")


def test_get_reads_only_its_own_record(tmp_path, monkeypatch):
    meta, samples = write_cache(tmp_path, 6, shard_size=6)
    cache = open_cache(tmp_path)
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((n, off)) or real_pread(fd, n, off))
    cache.get("s3")
    entry = cache.entry("s3")
    assert reads == [(entry.length, entry.offset)]
    shard = next(tmp_path.glob("*.bin"))
    assert entry.length < shard.stat().st_size / 3


def test_rerun_skips_stored_ids_and_appends_new_shards(tmp_path):
    meta, first = write_cache(tmp_path, 4)
    rng = np.random.default_rng(9)
    stored = open_cache(tmp_path).ids()
    with CacheWriter(tmp_path, meta, shard_size=3) as writer:
        for i in range(6):
            if f"s{i}" not in stored:
                writer.add(f"s{i}", make_sample(rng))
    report = verify_cache(tmp_path)
    assert report.ok and report.samples == 6 and not report.warnings


def test_meta_mismatch_is_refused_and_names_the_fields(tmp_path):
    write_cache(tmp_path, 2)
    with pytest.raises(CacheMetaMismatch, match=r"k: 8 != 16") as info:
        CacheWriter(tmp_path, make_meta(k=16, temperature=0.7))
    assert "temperature: 1.0 != 0.7" in str(info.value)
    assert len(open_cache(tmp_path)) == 2  # untouched


def test_crash_mid_shard_leaves_nothing_a_reader_trusts(tmp_path):
    meta, _ = write_cache(tmp_path, 3, shard_size=3)
    writer = CacheWriter(tmp_path, meta, shard_size=100)
    writer.add("late", make_sample(np.random.default_rng(5)))
    writer._file.flush()  # bytes on disk, shard not finished: what a SIGKILL leaves
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    cache = open_cache(tmp_path)
    assert "late" not in cache and len(cache) == 3
    report = verify_cache(tmp_path)
    assert report.ok and any("unfinished temp file" in w for w in report.warnings)
    writer.close()
    assert "late" in open_cache(tmp_path)


def _write_in_child(directory: str, prefix: str, count: int, hold_open: bool) -> None:
    meta = make_meta()
    rng = np.random.default_rng(len(prefix))
    writer = CacheWriter(directory, meta, shard_size=2)
    for i in range(count):
        writer.add(f"{prefix}{i}", make_sample(rng))
    if hold_open:
        writer._file.flush()
        os._exit(0)  # dies without finishing its last shard
    writer.close()


def test_concurrent_workers_never_collide_and_dead_workers_temp_files_are_removed(tmp_path):
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_write_in_child, args=(str(tmp_path), p, 5, p == "c"))
                for p in ("a", "b", "c")]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    report = verify_cache(tmp_path)
    assert report.ok, report.problems
    assert report.samples == 14  # a0-a4, b0-b4, c0-c3 (c4 was in the unfinished shard)
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    CacheWriter(tmp_path, make_meta()).close()  # a new writer cleans up after the dead one
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------------ verify
def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_verify_catches_one_corrupted_byte_and_get_refuses_it(tmp_path):
    meta, samples = write_cache(tmp_path, 6, shard_size=6)
    cache = open_cache(tmp_path)
    entry = cache.entry("s2")
    flip_byte(tmp_path / entry.shard, entry.offset + entry.length // 2)
    report = verify_cache(tmp_path)
    assert not report.ok
    assert any("'s2'" in p and "checksum" in p for p in report.problems)
    with pytest.raises(CacheCorrupt, match="s2"):
        open_cache(tmp_path).get("s2")
    assert_same(open_cache(tmp_path).get("s3"), samples["s3"], meta)  # neighbours still readable


def test_verify_catches_truncation_missing_data_and_bad_index(tmp_path):
    write_cache(tmp_path, 6, shard_size=3)
    shards = sorted(tmp_path.glob("*.bin"))
    shards[0].write_bytes(shards[0].read_bytes()[:-5])
    shards[1].unlink()
    report = verify_cache(tmp_path)
    assert any("bytes on disk" in p for p in report.problems)
    assert any("is missing" in p for p in report.problems)
    index = sorted(tmp_path.glob("*.idx"))[0]
    index.write_text("{not json")
    assert any("unreadable index" in p for p in verify_cache(tmp_path).problems)


def test_verify_reports_a_record_whose_id_does_not_match_its_index(tmp_path):
    write_cache(tmp_path, 2, shard_size=2)
    index = next(tmp_path.glob("*.idx"))
    index.write_text(index.read_text().replace('"s1"', '"zz"'))
    assert any("holds id 's1'" in p for p in verify_cache(tmp_path).problems)


def test_stats_counts_samples_tokens_and_bytes(tmp_path):
    meta, samples = write_cache(tmp_path, 5, meta=make_meta(version=2))
    stats = cache_stats(tmp_path)
    tokens = sum(len(s.response_ids) for s in samples.values())
    assert (stats.samples, stats.tokens, stats.k) == (5, tokens, 8)
    assert stats.data_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.bin"))
    assert stats.payload_bytes_per_entry == (17 + 12) / 8
    assert stats.bytes_per_entry > stats.payload_bytes_per_entry  # headers, ids, texts
    assert "per entry" in "\n".join(stats.lines())


def test_index_checksums_are_crc32_of_the_record_bytes(tmp_path):
    write_cache(tmp_path, 2, shard_size=2)
    cache = open_cache(tmp_path)
    for sample_id in cache:
        entry = cache.entry(sample_id)
        assert zlib.crc32(cache.read_bytes(entry)) == entry.crc32


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[1]", "must be a JSON object"), ("{not json", "not valid JSON"),
     ('{"format": "FORMAT", "version": VERSION}', "lacks required fields: ")],
)
def test_malformed_meta_is_a_clear_format_error(text, expected):
    from teachers.cache.format import FORMAT_NAME, FORMAT_VERSION, CacheFormatError, CacheMeta

    text = text.replace("FORMAT", FORMAT_NAME).replace("VERSION", str(FORMAT_VERSION))
    with pytest.raises(CacheFormatError, match=expected):
        CacheMeta.from_json(text)
