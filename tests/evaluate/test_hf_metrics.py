"""The toolkit's metrics as Hugging Face ``evaluate`` modules, loaded offline from their folders,
give exactly what ``distill evaluate`` reports for the same inputs (one implementation)."""

from __future__ import annotations

import pytest

from distill.config import EvalSetConfig
from distill.evaluate.hf_metrics import METRIC_DIRS
from distill.evaluate.runner import score_set

HYPOTHESES = ["the cat sat on the mat", "a dog barks loudly", "colour of the sky is blue"]
TRANSCRIPTS = ["The cat sat on a mat.", "A dog barked loudly!", "Color of the sky is blue"]
CAPTIONS = [["a cat sits on a mat", "the cat is sitting"], ["a dog is barking", "dog barks"],
            ["the blue sky", "a clear blue sky", "sky"]]


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    import os

    os.environ["HF_EVALUATE_OFFLINE"] = "1"  # a local folder must not need the Hub
    import evaluate

    cache = tmp_path_factory.mktemp("evaluate_cache")
    return lambda name: evaluate.load(str(METRIC_DIRS[name]), cache_dir=str(cache))


def records(references):
    return [{"id": str(i), "text": refs[0] if isinstance(refs, list) else refs,
             "references": refs if isinstance(refs, list) else None}
            for i, refs in enumerate(references)]


def test_wer_and_cer_match_distill_evaluate(load):
    eval_set = EvalSetConfig(name="s", manifest="m.jsonl", task="asr", metrics=["wer", "cer"])
    reported = score_set(eval_set, records(TRANSCRIPTS), HYPOTHESES).metrics
    wer = load("wer").compute(predictions=HYPOTHESES, references=TRANSCRIPTS)
    cer = load("cer").compute(predictions=HYPOTHESES, references=TRANSCRIPTS)
    assert wer["wer"] == reported["wer"]["value"] and cer["cer"] == reported["cer"]["value"]
    # hand count after Whisper normalisation: a->the (1 sub), barked->barks (1 sub); "colour" is
    # "color" to the normaliser; 6 + 4 + 6 = 16 reference words
    assert (wer["substitutions"], wer["deletions"], wer["insertions"]) == (2, 0, 0)
    assert wer["reference_units"] == 16 and wer["wer"] == pytest.approx(100 * 2 / 16)


def test_caption_metrics_match_distill_evaluate(load):
    names = ["cider_d", "bleu_4", "rouge_l"]
    eval_set = EvalSetConfig(name="c", manifest="m.jsonl", task="audiocaption", metrics=names)
    reported = score_set(eval_set, records(CAPTIONS), HYPOTHESES).metrics
    for name in names:
        got = load(name).compute(predictions=HYPOTHESES, references=CAPTIONS)
        assert got[name] == reported[name]["value"], name
    cider = load("cider_d").compute(predictions=HYPOTHESES, references=CAPTIONS)
    assert cider["cider_d_x100"] == pytest.approx(100 * cider["cider_d"])


def test_single_string_references_and_batches(load):
    metric = load("bleu_4")
    for hyp, refs in zip(HYPOTHESES, CAPTIONS, strict=True):
        metric.add(prediction=hyp, reference=refs)  # evaluate's incremental API
    added = metric.compute()
    direct = load("bleu_4").compute(predictions=HYPOTHESES, references=CAPTIONS)
    assert added == direct
    one = load("rouge_l").compute(predictions=HYPOTHESES[:2], references=["a cat", "a dog"])
    listed = load("rouge_l").compute(predictions=HYPOTHESES[:2], references=[["a cat"], ["a dog"]])
    assert one == listed


def test_asr_metric_refuses_several_references(load):
    from distill.evaluate.metrics import compute_metric

    with pytest.raises(ValueError, match="expected format"):  # the module's declared features
        load("wer").compute(predictions=["a b"], references=[["a b", "a c"]])
    with pytest.raises(ValueError, match="one reference transcript"):
        compute_metric("wer", ["a b"], [["a b", "a c"]])
