"""End tokens mapped and one-sided specials folded, for a pair that shares its ordinary vocabulary
but not its specials (R1-Distill-Llama vs LLaMA-3.2-Instruct in miniature, built in conftest)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from teachers.fingerprint import Relation, check_compatible
from teachers.token_map import TokenMapError, plan

FLOOR = -40.0


@pytest.fixture(scope="module")
def teacher_tok(r1_like_tokenizer_dir):
    return AutoTokenizer.from_pretrained(r1_like_tokenizer_dir)


@pytest.fixture(scope="module")
def pair_map(teacher_tok, tokenizer):
    return plan(teacher_tok, tokenizer, tokenizer.eos_token_id)


def test_relation_tells_same_vocabulary_from_same_ordinary_vocabulary(teacher_tok, tokenizer,
                                                                      smollm2_dir):
    same = check_compatible(tokenizer, AutoTokenizer.from_pretrained(smollm2_dir))
    assert same.relation is Relation.SAME and same.notes == []
    pair = check_compatible(teacher_tok, tokenizer)
    assert pair.relation is Relation.SAME_ORDINARY
    assert any("'<｜end▁of▁sentence｜>' (id 3)" in n and "'<|im_end|>' (id 2)" in n
               for n in pair.notes)


def test_plan_maps_every_end_and_folds_what_the_student_lacks(pair_map):
    assert pair_map.student_end == 2
    assert pair_map.mapped == {3: 2, 0: 2}  # <｜end▁of▁sentence｜>, <|endoftext|> -> <|im_end|>
    # id 2 is a reserved token to the teacher: not the student's end, so folded (as a teacher id)
    assert pair_map.folded == {2, 4, 5, 49152, 49153}
    text = "\n".join(pair_map.describe())
    for name in ("<think>", "</think>", "<｜Assistant｜>", "<｜User｜>", "<|reserved_special_token_2|>"):
        assert name in text
    assert 2 not in pair_map.fillers and all(f < 49152 for f in pair_map.fillers)


def _mass(logprobs, rest):
    return np.exp(np.asarray(logprobs, dtype=np.float64)).sum(-1) + np.exp(np.asarray(rest, np.float64))


def test_rows_map_merge_and_fold_conserving_mass(pair_map):
    p = {3: 0.40, 100: 0.20, 4: 0.10, 49152: 0.05, 2: 0.05, 0: 0.04, 7: 0.01}
    ids = np.array([list(p)])
    logprobs = np.log(np.array([list(p.values())]))
    rest = np.log(np.array([1 - sum(p.values())]))  # 0.15
    new_ids, new_lp, new_rest = pair_map.apply_rows(ids, logprobs, rest, FLOOR)
    row = dict(zip(new_ids[0].tolist(), np.exp(new_lp[0].astype(np.float64)).tolist(), strict=True))
    assert new_ids.shape == ids.shape and len(set(new_ids[0].tolist())) == ids.shape[1]
    assert row[2] == pytest.approx(0.40 + 0.04)  # both ends merged onto the student's end id
    assert row[100] == pytest.approx(0.20) and row[7] == pytest.approx(0.01)
    assert np.exp(float(new_rest[0])) == pytest.approx(0.15 + 0.10 + 0.05 + 0.05)  # folded
    fillers = [t for t in new_ids[0].tolist() if t not in (2, 100, 7)]
    assert len(fillers) == 4 and all(row[f] < 1e-17 for f in fillers)
    assert set(fillers) <= set(pair_map.fillers)
    assert list(new_lp[0]) == sorted(new_lp[0], reverse=True)
    assert _mass(new_lp, new_rest)[0] == pytest.approx(1.0, abs=1e-6)
    assert int(new_ids.max()) < 49152


def test_untouched_rows_are_copied_and_responses_map_or_are_refused(pair_map):
    ids = np.array([[100, 200, 300]])
    logprobs = np.log(np.array([[0.5, 0.2, 0.1]]))
    new_ids, new_lp, _ = pair_map.apply_rows(ids, logprobs, np.log([0.2]), FLOOR)
    np.testing.assert_array_equal(new_ids, ids)
    np.testing.assert_allclose(new_lp, logprobs, rtol=1e-6)
    assert pair_map.map_response([100, 200, 3]) == [100, 200, 2]
    with pytest.raises(TokenMapError, match="<think>"):
        pair_map.map_response([4, 100, 3])


# ------------------------------------------------------------------------- through the job
@pytest.fixture(scope="module")
def r1_like_teacher_dir(teacher_tok, tiny_llama_factory, tmp_path_factory):
    """A tiny random LLaMA over the R1-like tokenizer (49154 outputs; the student has 49152)."""
    return tiny_llama_factory(tmp_path_factory.mktemp("models") / "r1-like", teacher_tok, seed=5)


@pytest.mark.slow
def test_score_job_writes_rows_the_student_can_read_with_the_map_in_the_meta(
    r1_like_teacher_dir, teacher_tok, tokenizer, smollm2_dir, tmp_path, helpers
):
    """Top-49000 of 49154 ids, so every special is in every row: id 2 must hold the teacher's
    two end tokens' mass, the rest the folded ids' mass, and no id may reach 49152."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import load_recipe
    from distill.data.targets import encode_target
    from distill.losses import TopKTargets
    from distill.losses.targets import check_teacher
    from teachers.backends.transformers_backend import TransformersBackend
    from teachers.cache import open_cache
    from teachers.generate import Job
    from teachers.prompts import prompt_ids

    k = 49000
    records = [r for r in helpers.sample_records(2)]
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", records)
    path = helpers.write_recipe(tmp_path / "r.yaml", r1_like_teacher_dir, manifest,
                                tmp_path / "cache", student=smollm2_dir, backend="transformers",
                                top_k=k)
    recipe = load_recipe(path)
    backend = TransformersBackend.load(str(r1_like_teacher_dir), dtype="float32", device="cpu")
    summary = Job(recipe, progress=False, backend=backend).run()
    assert summary.ok and summary.written == 2, summary.lines()
    assert any("folded into the tail" in n for n in summary.notes)
    cache = open_cache(recipe.teacher.cache_dir)
    assert cache.meta.token_map["mapped"] == [[0, 2], [3, 2]]
    assert cache.meta.token_map["folded"] == [2, 4, 5, 49152, 49153]
    model = AutoModelForCausalLM.from_pretrained(r1_like_teacher_dir).eval()
    for record in records:
        stored = cache.get(record["id"])
        target = encode_target(tokenizer, record["text"])
        assert stored.response_ids.tolist() == target and target[-1] == 2
        prompt = prompt_ids(teacher_tok, record, recipe.teacher.prompts, recipe.teacher.reasoning)
        fed = [*prompt, *target[:-1], 3]  # the teacher is fed its own end as the last input
        with torch.no_grad():
            logp = model(torch.tensor([fed])).logits[0, len(prompt) - 1 : -1].double()
        p = logp.log_softmax(-1).exp()
        outside = p.sort(-1, descending=True).values[:, k:].sum(-1)
        end = (p[:, 3] + p[:, 0]).log()
        rest = (p[:, [2, 4, 5, 49152, 49153]].sum(-1) + outside).log()
        at_end = torch.from_numpy(np.where(stored.topk_ids == 2)[1])
        got_end = torch.from_numpy(stored.topk_logprobs).double().gather(1, at_end[:, None])[:, 0]
        torch.testing.assert_close(got_end, end, atol=cache.meta.max_logprob_error + 1e-3, rtol=0)
        # In probabilities: 1 - sum of 49000 float32 probabilities is good to ~1e-6 absolute.
        torch.testing.assert_close(torch.from_numpy(stored.rest_logprobs).double().exp(),
                                   rest.exp(), atol=1e-5, rtol=0.006)
        assert int(stored.topk_ids.max()) < len(tokenizer)
        check_teacher(TopKTargets(torch.from_numpy(stored.topk_ids),
                                  torch.from_numpy(stored.topk_logprobs)), len(target),
                      len(tokenizer))  # what training checks: no "got range [..., 49153]"
