"""Cross-tokenizer caches (meta ``teacher_tokens``): the span block round-trips, old caches
read unchanged, a record without spans is refused, and verify checks the spans."""

from __future__ import annotations

import json

import numpy as np
import pytest

from teachers.cache import CachedSample, CacheMeta, CacheWriter, open_cache, verify_cache
from teachers.cache.format import decode_record, encode_record
from tests.teachers.test_cache import make_meta, make_sample

TEXT = "unbelievable 12345"
SPANS = np.array([[0, 2], [2, 7], [7, 12], [12, 13], [13, 14], [14, 18]])


def with_spans(rng, spans=SPANS, text=TEXT) -> CachedSample:
    return make_sample(rng, length=len(spans), text=text)._replace(spans=spans)


def test_spans_round_trip_and_cost_eight_bytes_a_token():
    rng = np.random.default_rng(0)
    meta = make_meta(teacher_tokens=True)
    sample = with_spans(rng)
    data = encode_record("s1", sample, meta)
    _, back = decode_record(data, meta)
    np.testing.assert_array_equal(back.spans, SPANS)
    assert back.text == TEXT
    plain = encode_record("s1", sample._replace(spans=None), make_meta())
    assert len(data) - len(plain) == 8 * len(SPANS)  # one u32 start and end per token


def test_a_cache_without_the_flag_reads_as_before():
    meta = make_meta()
    assert not meta.teacher_tokens
    old = json.loads(meta.to_json())
    del old["teacher_tokens"]  # a meta.json written before the field existed
    assert CacheMeta.from_json(json.dumps(old)) == meta
    rng = np.random.default_rng(1)
    sample = make_sample(rng)
    data = encode_record("s", sample, meta)
    spans = np.zeros((len(sample.response_ids), 2), dtype=np.int64)
    flagged = encode_record("s", sample._replace(spans=spans), make_meta(teacher_tokens=True))
    texts = 4 + len(sample.text.encode()) + 4  # the text and the absent rationale
    top = len(data) - texts
    assert flagged[:top] == data[:top] and flagged[-texts:] == data[top:]  # same bytes around
    assert len(flagged) - len(data) == 8 * len(spans)  # the span block, absent without the flag
    assert decode_record(data, meta)[1].spans is None


def test_a_teacher_token_record_needs_a_span_per_token():
    meta = make_meta(teacher_tokens=True)
    with pytest.raises(ValueError, match=r"needs a \[start, end\) span per response token"):
        encode_record("s", make_sample(np.random.default_rng(2)), meta)


def test_verify_reports_spans_that_cannot_be_the_texts_tokens(tmp_path):
    rng = np.random.default_rng(3)
    backwards = SPANS.copy()
    backwards[3] = [1, 5]
    beyond = SPANS.copy()
    beyond[-1] = [14, 30]
    with CacheWriter(tmp_path, make_meta(teacher_tokens=True)) as writer:
        writer.add("good", with_spans(rng))
        writer.add("backwards", with_spans(rng, backwards))
        writer.add("beyond", with_spans(rng, beyond))
    report = verify_cache(tmp_path)
    assert report.samples == 3 and len(report.problems) == 2
    assert "'backwards'" in report.problems[0] and "token spans go backwards" in report.problems[0]
    assert "'beyond'" in report.problems[1]
    assert "ends at character 30 of a 18-character text" in report.problems[1]
    with open_cache(tmp_path) as cache:
        np.testing.assert_array_equal(cache.get("good").spans, SPANS)
