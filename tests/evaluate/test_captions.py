"""Caption metrics: CIDEr-D against a plain implementation of its definition, written here."""

import math
from collections import Counter

import pytest

from distill.evaluate.captions import caption_scores, cider_d, preprocess_caption


def naive_cider_d(candidates, references, n=4, sigma=6.0):
    """CIDEr-D as defined by Vedantam et al. and the coco-caption code, in plain Python.

    tf-idf n-gram vectors (idf from the reference sets), clipped cosine per n, a Gaussian
    penalty on the length difference, mean over n, mean over references, x 10, mean over clips.
    """

    def grams(sentence, k):
        words = sentence.split()
        return Counter(tuple(words[i : i + k]) for i in range(len(words) - k + 1))

    num_clips = len(references)
    doc_freq = Counter()
    for refs in references:
        seen = set()
        for ref in refs:
            for k in range(1, n + 1):
                seen.update(grams(ref, k))
        doc_freq.update(seen)
    log_clips = math.log(float(num_clips))

    def vector(sentence):
        vecs = []
        for k in range(1, n + 1):
            vecs.append({g: tf * (log_clips - math.log(max(1.0, doc_freq[g])))
                         for g, tf in grams(sentence, k).items()})
        return vecs, len(sentence.split())

    total = 0.0
    for cand, refs in zip(candidates, references, strict=True):
        cand_vecs, cand_len = vector(cand)
        per_ref = []
        for ref in refs:
            ref_vecs, ref_len = vector(ref)
            sims = []
            for cv, rv in zip(cand_vecs, ref_vecs, strict=True):
                dot = sum(min(v, rv.get(g, 0.0)) * rv.get(g, 0.0) for g, v in cv.items())
                norm_c = math.sqrt(sum(v * v for v in cv.values()))
                norm_r = math.sqrt(sum(v * v for v in rv.values()))
                sim = dot / (norm_c * norm_r) if norm_c and norm_r else 0.0
                sims.append(sim * math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma**2)))
            per_ref.append(sum(sims) / n)
        total += 10.0 * sum(per_ref) / len(refs)
    return total / num_clips


CANDIDATES = [
    "a dog barks while cars pass by",
    "rain falls on a tin roof",
    "a man speaks and a dog barks",
]
REFERENCES = [
    ["a dog is barking as cars drive past", "dogs bark and cars pass by", "a dog barks loudly"],
    ["heavy rain falls on a metal roof", "rain is falling on a roof"],
    ["a man talks while a dog barks", "someone speaks and a dog is barking", "a man speaks"],
]


def test_cider_d_matches_the_definition():
    expected = naive_cider_d(CANDIDATES, REFERENCES)
    assert expected > 0.1  # the fixture is not degenerate
    assert cider_d(CANDIDATES, REFERENCES) == pytest.approx(expected, rel=1e-9)


def test_cider_d_of_a_perfect_copy_beats_a_wrong_caption():
    refs = [["a bird sings in the forest"], ["water drips in a cave"]]
    perfect = cider_d(["a bird sings in the forest", "water drips in a cave"], refs)
    wrong = cider_d(["water drips in a cave", "a bird sings in the forest"], refs)
    assert perfect > wrong


def test_preprocessing_lowercases_and_strips_punctuation():
    assert preprocess_caption("A Dog, barking!  Loudly.") == "a dog barking loudly"


def test_scores_are_labelled_and_cider_d_comes_with_its_x100_variant():
    scores = {s.name: s for s in caption_scores(CANDIDATES, REFERENCES, ["cider_d", "bleu_4"])}
    assert scores["cider_d_x100"].value == pytest.approx(100 * scores["cider_d"].value)
    assert "v1.0" in scores["cider_d_x100"].label
    assert 0.0 <= scores["bleu_4"].value <= 1.0


def test_java_metrics_without_their_jar_are_unavailable_with_a_reason(tmp_path):
    from aac_metrics.utils.globals import get_default_cache_path, set_default_cache_path

    previous = get_default_cache_path()
    set_default_cache_path(tmp_path)  # an empty cache: no jar downloaded
    try:
        (score,) = caption_scores(CANDIDATES, REFERENCES, ["spice"])
    finally:
        set_default_cache_path(previous)
    assert score.value is None
    assert "spice-1.0.jar" in score.unavailable_reason or "Java" in score.unavailable_reason


def test_bad_reference_lists_are_clear_errors():
    with pytest.raises(ValueError, match="references\\[0\\]: expected a non-empty list"):
        cider_d(["a"], ["a single string"])
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        cider_d(["a", "b"], [["a"]])


# ---------------------------------------------------------------- small sets, empty references
ALL = ["cider_d", "bleu_4", "rouge_l", "meteor", "spice", "spider"]


@pytest.mark.parametrize("clips", [0, 1])
def test_a_set_too_small_for_a_metric_reports_it_unavailable(clips):
    scores = {s.name: s for s in caption_scores(CANDIDATES[:clips], REFERENCES[:clips], ALL)}
    assert set(scores) == set(ALL) | {"cider_d_x100"}
    for name in ("cider_d", "cider_d_x100", "spider"):
        assert scores[name].value is None
        assert f"at least 2 clips (its IDF weights come from the set's references); {clips}" in (
            scores[name].unavailable_reason
        )
    for score in scores.values():  # every metric: a value, or None with a reason
        assert (score.value is None) == (score.unavailable_reason is not None)
    if clips == 1:  # BLEU and ROUGE-L are defined on one clip
        assert scores["bleu_4"].value is not None and scores["rouge_l"].value is not None


def test_cider_d_on_one_clip_is_a_clear_error():
    with pytest.raises(ValueError, match="CIDEr-D needs at least 2 clips"):
        cider_d(CANDIDATES[:1], REFERENCES[:1])


def test_empty_reference_captions_are_ignored_and_counted():
    refs = [list(REFERENCES[0]) + ["", " ?! "], list(REFERENCES[1])]
    cands = CANDIDATES[:2]
    got = {s.name: s for s in caption_scores(cands, refs, ["rouge_l", "cider_d"])}
    want = {s.name: s for s in caption_scores(cands, REFERENCES[:2], ["rouge_l", "cider_d"])}
    for name in ("rouge_l", "cider_d"):
        assert got[name].value == pytest.approx(want[name].value)
        assert got[name].note.startswith("2 empty reference caption(s) ignored")


def test_a_clip_whose_references_are_all_empty_is_left_out():
    refs = [[""], *REFERENCES[1:3]]
    got = caption_scores(CANDIDATES[:3], refs, ["bleu_4"])[0]
    want = caption_scores(CANDIDATES[1:3], REFERENCES[1:3], ["bleu_4"])[0]
    assert got.value == pytest.approx(want.value)
    assert "1 clip(s) left without references not scored" in got.note
