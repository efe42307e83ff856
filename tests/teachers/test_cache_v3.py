"""Format version 3 (range-coded top-k block): round trips within the stated bound, the id
classes, old versions read from fixtures written by the version-2 writer, corruption."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from teachers.cache import (
    CachedSample,
    CacheMeta,
    CacheWriter,
    cache_stats,
    open_cache,
    verify_cache,
)
from teachers.cache.coding import (
    DEFAULT_CODEC,
    id_class_probabilities,
    id_class_ranges,
    id_classes,
    rank_in_row,
)
from teachers.cache.format import CacheFormatError, decode_record, encode_record, rest_from_topk
from tests.teachers.test_cache import make_meta as shared_meta

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = 128256


def make_meta(**changes) -> CacheMeta:
    """test_cache's meta at this file's k = 64 and Llama-3's vocabulary."""
    return shared_meta(**{"k": 64, "vocab_size": VOCAB, **changes})


def lm_rows(rng, length: int, k: int, vocab: int = VOCAB):
    """Top-k of softmax over Zipf-weighted random logits: peaked, low ids frequent, as an LM's."""
    bias = -1.1 * np.log(np.arange(vocab) + 300.0)
    logits = rng.standard_normal((length, vocab)) * 2.5 + bias
    logits[np.arange(length), rng.integers(0, 2000, length)] += 14.0
    logprobs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    ids = np.argsort(-logprobs, axis=1)[:, :k]
    return ids.astype(np.int64), np.take_along_axis(logprobs, ids, 1)


def sample_from(rng, length: int, k: int, vocab: int = VOCAB) -> tuple[CachedSample, np.ndarray]:
    """A sample (float32 as the backends give) and its exact float64 log-probs."""
    ids, exact = lm_rows(rng, length, k, vocab)
    response = ids[:, 0].copy()
    response[::3] = ids[::3, min(2, k - 1)]  # the target is not always the teacher's best
    response[1::4] = rng.integers(0, vocab, len(response[1::4]))  # nor always in its top-k
    return CachedSample(response, ids, exact.astype(np.float32), "why", "text"), exact


# ----------------------------------------------------------------------------- id classes
def test_id_classes_invert_exactly_over_a_whole_vocabulary():
    ids = np.arange(VOCAB)
    classes, low, widths = id_classes(ids)
    base, back_widths = id_class_ranges(classes)
    np.testing.assert_array_equal(base + low, ids)
    np.testing.assert_array_equal(back_widths, widths)
    assert (low < (1 << widths)).all()
    # four classes per octave above 8: a 17-bit vocabulary has 8 + 14 * 4 = 64 classes
    assert classes.max() + 1 == 64 == id_class_probabilities(VOCAB, 1.1, 300.0).size


def test_rank_in_row_is_the_first_match_or_k():
    ids = np.array([[5, 7, 5], [1, 2, 3]])
    np.testing.assert_array_equal(rank_in_row(ids, np.array([5, 9])), [0, 3])


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(("k", "length"), [(64, 40), (16, 9), (8, 5), (1, 3), (64, 0)])
def test_round_trip_within_the_stated_bound(k, length):
    """Ids and the target exactly; every logprob within half a step, the mean about a quarter."""
    meta = make_meta(k=k)
    rng = np.random.default_rng(k + length)
    sample, exact = sample_from(rng, length, k)
    sample_id, back = decode_record(encode_record("a/ü", sample, meta), meta)
    assert sample_id == "a/ü" and (back.text, back.rationale) == ("text", "why")
    np.testing.assert_array_equal(back.response_ids, sample.response_ids)
    np.testing.assert_array_equal(back.topk_ids, sample.topk_ids)
    step = DEFAULT_CODEC["logprob_step"]
    error = np.abs(back.topk_logprobs - np.maximum(exact, -40.0))
    assert back.topk_logprobs.dtype == np.float32 and back.topk_logprobs.shape == (length, k)
    if length:
        assert error.max() <= step / 2 + 1e-5
        if length * k > 1000:
            assert 0.2 * step < error.mean() <= 0.01  # rounding: ~step / 4 = 0.00975 nats
        np.testing.assert_allclose(back.rest_logprobs, np.maximum(rest_from_topk(exact), -40),
                                   atol=meta.codec.max_error + 1e-5)


def test_unsorted_rows_come_back_best_first_as_the_same_pairs():
    """A token map can leave filler slots at the floor mid-row; pairs survive, order is by value."""
    meta = make_meta(k=6)
    ids = np.array([[10, 11, 12, 13, 14, 15]])
    logprobs = np.array([[-0.5, -45.0, -1.0, -40.0, -2.0, -1.0]], np.float32)
    sample = CachedSample(np.array([12]), ids, logprobs)
    _, back = decode_record(encode_record("x", sample, meta), meta)
    np.testing.assert_array_equal(back.topk_ids, [[10, 12, 15, 14, 11, 13]])  # ties keep order
    assert (np.diff(back.topk_logprobs[0]) <= 0).all() and back.topk_logprobs[0, -1] == -40.0
    assert back.response_ids.tolist() == [12]


def test_version_3_is_much_smaller_than_version_2_on_lm_like_rows():
    rng = np.random.default_rng(3)
    sample, _ = sample_from(rng, 30, 64)
    v2 = len(encode_record("x", sample, make_meta(version=2)))
    v3 = len(encode_record("x", sample, make_meta()))
    assert v3 < 0.7 * v2, (v3, v2)


def test_ids_outside_the_vocabulary_are_refused():
    meta = make_meta(k=2, vocab_size=1000)
    sample = CachedSample(np.array([1]), np.array([[3, 1000]]), np.array([[-0.1, -3.0]], np.float32))
    with pytest.raises(ValueError, match=r"x: top-k ids must lie in \[0, 1000\)"):
        encode_record("x", sample, meta)


def test_meta_keeps_its_models_and_old_metas_have_none():
    meta = make_meta()
    again = CacheMeta.from_json(meta.to_json())
    assert again == meta and again.topk_coding["name"] == "range-ref-1"  # new caches' codec
    assert make_meta(version=2).topk_coding == {}
    broken = json.loads(meta.to_json())
    del broken["topk_coding"]
    with pytest.raises(CacheFormatError, match="lacks required fields: topk_coding"):
        CacheMeta.from_json(json.dumps(broken))
    broken["topk_coding"] = {"name": "x"}
    with pytest.raises(CacheFormatError, match="codec is malformed"):
        CacheMeta.from_json(json.dumps(broken))
    broken["topk_coding"] = {**DEFAULT_CODEC, "gap_tables": DEFAULT_CODEC["gap_tables"][:3]}
    with pytest.raises(CacheFormatError, match="one table per slot context"):
        CacheMeta.from_json(json.dumps(broken))


# ------------------------------------------------------------------------ old versions read
@pytest.mark.parametrize("version", [1, 2])
def test_caches_written_by_the_version_2_writer_still_read(version):
    """Fixtures written by the writer before version 3 (tests/teachers/fixtures/cache-v1, -v2)."""
    exact = json.loads((FIXTURES / "cache-exact.json").read_text())
    folder = FIXTURES / f"cache-v{version}"
    with open_cache(folder) as cache:
        assert cache.meta.version == version and cache.meta.topk_coding == {}
        assert cache.ids() == set(exact)
        for sample_id, want in exact.items():
            got = cache.get(sample_id)
            np.testing.assert_array_equal(got.response_ids, want["response_ids"])
            np.testing.assert_array_equal(got.topk_ids, want["topk_ids"])
            np.testing.assert_allclose(got.topk_logprobs, want["topk_logprobs"], atol=0.0049 + 1e-5)
            assert (got.text, got.rationale) == (want["text"], want["rationale"])
            assert (got.rest_logprobs is None) == (version == 1)
    report = verify_cache(folder)
    assert report.ok and report.samples == 3, report.problems
    stats = cache_stats(folder)
    assert stats.payload_bytes_per_entry == (17 + 12) / 8
    assert "per entry" in "\n".join(stats.lines())


def test_the_committed_version_3_fixture_decodes_to_the_same_values():
    """Guards the bytes on disk: a constriction release that quantised the models differently
    (or a change to the coder) would make existing caches unreadable; this catches it."""
    exact = json.loads((FIXTURES / "cache-exact.json").read_text())
    with open_cache(FIXTURES / "cache-v3") as cache:
        assert cache.meta.version == 3
        for sample_id, want in exact.items():
            got = cache.get(sample_id)
            np.testing.assert_array_equal(got.response_ids, want["response_ids"])
            np.testing.assert_array_equal(got.topk_ids, want["topk_ids"])
            np.testing.assert_allclose(got.topk_logprobs, want["topk_logprobs"],
                                       atol=cache.meta.max_logprob_error + 1e-5)
    assert verify_cache(FIXTURES / "cache-v3").ok


# ------------------------------------------------------------------------------ corruption
def write(folder: Path, count: int = 4):
    meta = make_meta(k=16)
    rng = np.random.default_rng(8)
    samples = {f"s{i}": sample_from(rng, 5 + i, 16)[0] for i in range(count)}
    with CacheWriter(folder, meta, shard_size=count) as writer:
        for sample_id, sample in samples.items():
            writer.add(sample_id, sample)
    return meta, samples


def test_a_flipped_byte_in_a_coded_block_is_caught(tmp_path):
    meta, samples = write(tmp_path)
    cache = open_cache(tmp_path)
    entry = cache.entry("s1")
    path = tmp_path / entry.shard
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x10
    path.write_bytes(bytes(data))
    report = verify_cache(tmp_path)
    assert any("'s1'" in p and "checksum" in p for p in report.problems)
    assert not any("'s2'" in p for p in report.problems)


def test_a_coded_block_with_extra_or_missing_bytes_is_a_format_error():
    """Bytes a checksum would not catch (a writer bug): a longer block, a cut record."""
    meta = make_meta(k=16)
    sample, _ = sample_from(np.random.default_rng(1), 6, 16)
    data = encode_record("x", sample, meta)
    header = 12 + 1  # fixed header + the id "x"
    (size,) = struct.unpack_from("<I", data, header)
    block_end = header + 4 + size
    longer = data[:header] + struct.pack("<I", size + 16) + data[header + 4 : block_end] \
        + bytes(range(1, 17)) + data[block_end:]  # beyond the decoder's look-ahead
    with pytest.raises(CacheFormatError, match="data after its last symbol"):
        decode_record(longer, meta)
    odd = data[:header] + struct.pack("<I", size + 1) + data[header + 4 : block_end] + b"\0" \
        + data[block_end:]
    with pytest.raises(CacheFormatError, match="whole number of 32-bit words"):
        decode_record(odd, meta)
    with pytest.raises(CacheFormatError, match="truncated"):
        decode_record(data[: header + 10], meta)


def test_stats_prints_bytes_per_entry_of_a_version_3_cache(tmp_path):
    meta, samples = write(tmp_path)
    stats = cache_stats(tmp_path)
    text = "\n".join(stats.lines())
    assert stats.entries == sum(len(s.response_ids) for s in samples.values()) * 16
    assert f"{stats.bytes_per_entry:.3f} B" in text and "range-coded" in text
    assert stats.bytes_per_entry < (17 + 12) / 8
    assert verify_cache(tmp_path).ok


def test_fixture_folder_is_left_untouched_by_reading(tmp_path):
    """Readers never write: a copy of a fixture reads the same and its files stay byte-equal."""
    copy = tmp_path / "v2"
    shutil.copytree(FIXTURES / "cache-v2", copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    open_cache(copy).get("s0")
    verify_cache(copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_a_cache_begun_in_version_2_keeps_growing_in_version_2(tmp_path):
    """generate-teacher on a version-2 folder appends version-2 records instead of refusing."""
    from teachers.cache import CacheMetaMismatch
    from teachers.cache.reader import read_meta
    from teachers.cache.writer import in_folder_format

    old = make_meta(k=16, version=2)
    rng = np.random.default_rng(4)
    first, second = sample_from(rng, 4, 16)[0], sample_from(rng, 5, 16)[0]
    with CacheWriter(tmp_path, old) as writer:
        writer.add("a", first)
    adopted = in_folder_format(tmp_path, read_meta(tmp_path), make_meta(k=16))
    assert adopted == old
    with CacheWriter(tmp_path, adopted) as writer:
        writer.add("b", second)
    with open_cache(tmp_path) as cache:
        np.testing.assert_array_equal(cache.get("b").topk_ids, second.topk_ids)
    assert verify_cache(tmp_path).ok
    with pytest.raises(CacheMetaMismatch, match="temperature: 1.0 != 0.5"):
        in_folder_format(tmp_path, read_meta(tmp_path), make_meta(k=16, temperature=0.5))
