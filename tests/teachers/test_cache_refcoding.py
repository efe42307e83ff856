"""Codec ``range-ref-1`` (ids as references into the record): exact round trips of the quantised
rows, the error bound, references against a brute-force reference, corruption, stats, and that
caches written with ``range-zipf-1`` still read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from teachers.cache import CachedSample, CacheWriter, cache_stats, open_cache, verify_cache
from teachers.cache.coding import DEFAULT_CODEC, CodingError, TopKCodec
from teachers.cache.format import CacheFormatError, decode_record, encode_record
from teachers.cache.refcoding import (
    DEFAULT_REF_CODEC,
    RefTopKCodec,
    references,
    resolve_references,
)
from tests.teachers.test_cache_v3 import make_meta, sample_from

FIXTURES = Path(__file__).parent / "fixtures"
STEP = DEFAULT_REF_CODEC["logprob_step"]


def quantised_best_first(ids, logprobs):
    """The reference the decoder must reproduce: codes round(-clip(lp, -40, 0) / step) sorted
    ascending per row (stable), ids carried along, values -code * step floored at -40."""
    codes = np.rint(-np.clip(np.asarray(logprobs, np.float64), -40.0, 0.0) / STEP).astype(np.int64)
    order = np.argsort(codes, axis=1, kind="stable")
    values = np.maximum(-np.take_along_axis(codes, order, 1) * STEP, -40.0).astype(np.float32)
    return np.take_along_axis(np.asarray(ids), order, 1), values


def recurring_sample(rng, length: int, k: int, vocab: int = 128256):
    """Rows that reuse ids of rows 1 and 10+ back, at near and far ranks, with a duplicate id
    inside one row: every reference path (near, far back, wide delta, new) is taken."""
    pool = rng.choice(vocab, size=4 * k, replace=False)
    ids = np.empty((length, k), np.int64)
    for t in range(length):
        ids[t] = rng.choice(pool, size=k, replace=False) if t % 3 else rng.choice(vocab, k, False)
    if length > 2:
        ids[2, -1] = ids[2, 0]  # a filler-like duplicate within a row
    logprobs = np.sort(-rng.exponential(2.0, (length, k)).cumsum(1), axis=1)[:, ::-1]
    response = ids[np.arange(length), rng.integers(0, k, length)]
    if length:
        response[0] = vocab - 1  # a target outside its row
    return CachedSample(response, ids, logprobs.astype(np.float32), None, "t"), logprobs


def test_new_caches_use_the_reference_codec():
    assert make_meta().topk_coding["name"] == "range-ref-1"
    assert isinstance(make_meta().topk_codec, RefTopKCodec)


@pytest.mark.parametrize(("k", "length"), [(64, 40), (64, 17), (16, 30), (8, 9), (1, 12), (3, 1),
                                           (64, 0)])
@pytest.mark.parametrize("rows", ["lm", "recurring"])
def test_round_trip_is_the_quantised_input_exactly(k, length, rows):
    meta = make_meta(k=k)
    rng = np.random.default_rng(10 * k + length)
    sample = (sample_from(rng, length, k)[0] if rows == "lm"
              else recurring_sample(rng, length, k)[0])
    _, back = decode_record(encode_record("s", sample, meta), meta)
    want_ids, want_values = quantised_best_first(sample.topk_ids, sample.topk_logprobs)
    np.testing.assert_array_equal(back.topk_ids, want_ids)
    np.testing.assert_array_equal(back.topk_logprobs, want_values)
    np.testing.assert_array_equal(back.response_ids, sample.response_ids)


def test_error_bound_and_mean_error():
    meta = make_meta()
    sample, exact = sample_from(np.random.default_rng(5), 60, 64)
    _, back = decode_record(encode_record("s", sample, meta), meta)
    order = np.argsort(-exact, axis=1, kind="stable")
    error = np.abs(np.sort(back.topk_logprobs, 1) - np.sort(np.maximum(exact, -40), 1))
    assert error.max() <= STEP / 2 + 1e-5
    assert 0.2 * STEP < error.mean() <= 0.01  # ~ step / 4 = 0.00975 nats
    assert order.shape == back.topk_ids.shape


def test_references_match_a_brute_force_search():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 12, (9, 5))
    back, earlier = references(ids)
    for t in range(9):
        for j in range(5):
            hits = [(s, r) for s in range(t - 1, -1, -1) for r in range(5) if ids[s, r] == ids[t, j]]
            if not hits:
                assert back[t, j] == 0
                continue
            assert back[t, j] == t - hits[0][0]  # the most recent earlier row
            assert ids[t - back[t, j], earlier[t, j]] == ids[t, j]
    new = ids[back == 0]
    np.testing.assert_array_equal(resolve_references(back, earlier, new), ids)


def test_better_than_the_zipf_codec_on_recurring_rows():
    rng = np.random.default_rng(3)
    sample = recurring_sample(rng, 30, 64)[0]
    ref = len(encode_record("x", sample, make_meta()))
    zipf = len(encode_record("x", sample, make_meta(topk_coding=DEFAULT_CODEC)))
    assert ref < 0.9 * zipf, (ref, zipf)


def test_malformed_or_unknown_codecs_are_refused_with_their_reason():
    meta = json.loads(make_meta().to_json())
    for codec, reason in [
        ({**DEFAULT_REF_CODEC, "back_tables": DEFAULT_REF_CODEC["back_tables"][:2]},
         "one table per reference context"),
        ({**DEFAULT_REF_CODEC, "delta_tables": [[1, 2]] * 4}, "delta tables 34"),
        ({k: v for k, v in DEFAULT_REF_CODEC.items() if k != "new_id_alpha"}, "new_id_alpha"),
        ({**DEFAULT_REF_CODEC, "name": "range-lz-9"}, "unknown codec name 'range-lz-9'"),
    ]:
        with pytest.raises(CacheFormatError, match=reason):
            from teachers.cache.format import CacheMeta

            CacheMeta.from_json(json.dumps({**meta, "topk_coding": codec}))
    # a reader that knows only range-zipf-1 (no name check) finds no id_alpha: it refuses
    assert "id_alpha" not in DEFAULT_REF_CODEC


def test_corrupted_blocks_raise_a_coding_error_never_a_crash():
    """Flipped bits inside the block (what the CRC would catch first): decoding either fails
    with CodingError or returns arrays of the right shapes; never another exception."""
    codec = TopKCodec.from_meta(DEFAULT_REF_CODEC, 16, 128256, -40.0, 12)
    sample = recurring_sample(np.random.default_rng(4), 12, 16)[0]
    block = bytearray(codec.encode(sample.response_ids, sample.topk_ids, sample.topk_logprobs,
                                   np.zeros(12, np.int64)))
    rng = np.random.default_rng(0)
    failures = 0
    for _ in range(200):
        bad = bytearray(block)
        bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        try:
            response, ids, logprobs, rest = codec.decode(bytes(bad), 12)
        except CodingError:
            failures += 1
            continue
        assert ids.shape == (12, 16) and ids.min() >= 0 and ids.max() < 128256
        assert response.shape == (12,) and logprobs.shape == (12, 16) and rest.shape == (12,)
    assert failures > 0


def write(folder: Path, count: int = 4):
    meta = make_meta(k=16)
    rng = np.random.default_rng(8)
    samples = {f"s{i}": recurring_sample(rng, 9 + i, 16)[0] for i in range(count)}
    with CacheWriter(folder, meta, shard_size=count) as writer:
        for sample_id, sample in samples.items():
            writer.add(sample_id, sample)
    return meta, samples


def test_verify_names_the_shard_of_a_flipped_byte(tmp_path):
    write(tmp_path)
    entry = open_cache(tmp_path).entry("s2")
    path = tmp_path / entry.shard
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x04
    path.write_bytes(bytes(data))
    report = verify_cache(tmp_path)
    assert len(report.problems) == 1, report.problems
    assert entry.shard in report.problems[0] and "'s2'" in report.problems[0]
    assert "checksum" in report.problems[0]


def test_stats_print_bytes_per_entry_and_the_codec(tmp_path):
    _meta, samples = write(tmp_path)
    stats = cache_stats(tmp_path)
    text = "\n".join(stats.lines())
    assert stats.entries == sum(len(s.response_ids) for s in samples.values()) * 16
    assert f"per entry    {stats.bytes_per_entry:.3f} B" in text
    assert "codec range-ref-1" in text
    assert verify_cache(tmp_path).ok


def test_a_zipf_cache_keeps_its_codec_and_reads_as_written(tmp_path):
    """A folder begun with range-zipf-1 (the committed fixture, written before range-ref-1
    existed) reads to the same values, and a writer adopting its meta keeps that codec."""
    from teachers.cache.reader import read_meta
    from teachers.cache.writer import in_folder_format

    exact = json.loads((FIXTURES / "cache-exact.json").read_text())
    fixture = FIXTURES / "cache-v3"
    old = read_meta(fixture)
    assert old.topk_coding["name"] == "range-zipf-1" and type(old.topk_codec) is TopKCodec
    with open_cache(fixture) as cache:
        for sample_id, want in exact.items():
            got = cache.get(sample_id)
            np.testing.assert_array_equal(got.topk_ids, want["topk_ids"])
            np.testing.assert_allclose(got.topk_logprobs, want["topk_logprobs"], atol=STEP / 2 + 1e-5)
    assert "codec range-zipf-1" in "\n".join(cache_stats(fixture).lines())
    adopted = in_folder_format(fixture, old, make_meta(**{
        key: getattr(old, key) for key in ("k", "vocab_size", "teacher", "mode", "temperature")}))
    assert adopted.topk_coding == old.topk_coding


def test_new_caches_get_the_tables_fitted_nearest_their_width():
    """k < 24: the tables fitted on top-8 rows; wider: those fitted on top-64 rows. The meta
    keeps them, so a later change of the defaults never changes how a cache decodes."""
    from teachers.cache.format import CacheMeta
    from teachers.cache.refcoding import DEFAULT_REF_CODEC_SMALL_K

    small, wide = make_meta(k=8), make_meta(k=64)
    assert small.topk_coding == DEFAULT_REF_CODEC_SMALL_K and wide.topk_coding == DEFAULT_REF_CODEC
    assert CacheMeta.from_json(small.to_json()) == small
    broken = json.loads(small.to_json())
    broken["topk_coding"] = {}
    with pytest.raises(CacheFormatError, match="lacks required fields: topk_coding"):
        CacheMeta.from_json(json.dumps(broken))


def test_the_committed_range_ref_1_fixture_decodes_to_the_same_values():
    """Guards the bytes on disk (a constriction release or a coder change that moved them would
    make existing caches unreadable). Written by this codec from cache-v3-ref-exact.json; the
    sample 'long' (20 rows) takes references 1-7 and 8+ rows back and escaped deltas."""
    exact = json.loads((FIXTURES / "cache-v3-ref-exact.json").read_text())
    with open_cache(FIXTURES / "cache-v3-ref") as cache:
        assert cache.meta.topk_coding["name"] == "range-ref-1"
        for sample_id, want in exact.items():
            got = cache.get(sample_id)
            want_ids, want_values = quantised_best_first(np.array(want["topk_ids"]),
                                                         np.array(want["topk_logprobs"], np.float32))
            np.testing.assert_array_equal(got.response_ids, want["response_ids"])
            np.testing.assert_array_equal(got.topk_ids, want_ids)
            np.testing.assert_array_equal(got.topk_logprobs, want_values)
            assert (got.text, got.rationale) == (want["text"], want["rationale"])
    assert verify_cache(FIXTURES / "cache-v3-ref").ok
