"""Reasoning teachers in score mode: the scored answer goes after a closed think block.

The R1-like tokenizer (conftest) has R1's template shape: the generation prompt ends inside
``<think>\\n``. Scoring the answer there would ask for thinking text; the rows must be the
teacher's distribution *after* ``</think>``, where it writes answers.
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from teachers.prompts import opens_think_block, prompt_ids, reasoning_suffix

RECORD = {"id": "r1", "task": "asr", "text": "the cat sat"}
PROMPTS = {"asr": {"user": "Repeat: {text}"}}


@pytest.fixture(scope="module")
def teacher_tok(r1_like_tokenizer_dir):
    return AutoTokenizer.from_pretrained(r1_like_tokenizer_dir)


def test_auto_recognises_templates_that_open_a_think_block(teacher_tok, tokenizer):
    assert opens_think_block(teacher_tok) and not opens_think_block(tokenizer)


def test_auto_closes_the_block_r1_style_and_leaves_other_templates_alone(teacher_tok, tokenizer):
    plain = prompt_ids(teacher_tok, RECORD, PROMPTS, "none")
    closed = prompt_ids(teacher_tok, RECORD, PROMPTS, "auto")
    assert teacher_tok.decode(plain).endswith("<｜Assistant｜><think>\n")
    assert closed[: len(plain)] == plain
    assert teacher_tok.decode(closed).endswith("<｜Assistant｜><think>\n\n</think>\n\n")
    assert closed[len(plain):] == teacher_tok("\n</think>\n\n", add_special_tokens=False)["input_ids"]
    assert 5 in closed[len(plain):]  # </think> is the teacher's special token, one id
    smol = prompt_ids(tokenizer, RECORD, PROMPTS, "auto")
    assert smol == prompt_ids(tokenizer, RECORD, PROMPTS, "none")
    forced = prompt_ids(tokenizer, RECORD, PROMPTS, "closed")
    assert tokenizer.decode(forced[len(smol):]) == "<think>\n\n</think>\n\n"


def test_a_cached_rationale_goes_inside_the_block(teacher_tok):
    ids = reasoning_suffix(teacher_tok, "closed", rationale="  It is a cat.  ")
    assert teacher_tok.decode(ids) == "It is a cat.\n</think>\n\n"  # after "<think>\\n"


@pytest.mark.slow
def test_scored_rows_are_the_ones_after_the_closed_block(
    r1_like_tokenizer_dir, teacher_tok, tokenizer, smollm2_dir, tiny_llama_factory, tmp_path,
    helpers,
):
    """Job in score mode with reasoning: auto on a tiny R1-like teacher; the cached rows must
    equal the teacher's own rows computed (by a direct forward here) on the template's prompt
    text + "\\n</think>\\n\\n" + target, and differ from the rows right after "<think>\\n".
    The closing text is tokenised on its own, as the teacher would write it after the prompt's
    last token ("\\n\\n" as one text would merge the template's newline into it)."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import load_recipe
    from distill.data.targets import encode_target
    from teachers.backends.transformers_backend import TransformersBackend
    from teachers.cache import open_cache
    from teachers.generate import Job

    teacher_dir = tiny_llama_factory(tmp_path / "teacher", teacher_tok, seed=7)
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", [RECORD])
    path = helpers.write_recipe(tmp_path / "r.yaml", teacher_dir, manifest, tmp_path / "cache",
                                student=smollm2_dir, backend="transformers", top_k=8,
                                prompts=PROMPTS)
    recipe = load_recipe(path)
    assert recipe.teacher.reasoning == "auto"
    backend = TransformersBackend.load(str(teacher_dir), dtype="float32", device="cpu")
    summary = Job(recipe, progress=False, backend=backend).run()
    assert summary.ok, summary.lines()
    cache = open_cache(recipe.teacher.cache_dir)
    stored = cache.get("r1")

    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    target = encode_target(tokenizer, RECORD["text"])
    text = teacher_tok.apply_chat_template([{"role": "user", "content": "Repeat: the cat sat"}],
                                           tokenize=False, add_generation_prompt=True)

    def rows_after(*texts: str) -> torch.Tensor:
        prefix = [i for part in texts for i in teacher_tok(part, add_special_tokens=False)["input_ids"]]
        ids = torch.tensor([[*prefix, *target[:-1], 3]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prefix) - 1 : -1]
        return logits.double().log_softmax(-1)

    after_close = rows_after(text, "\n</think>\n\n")
    inside = rows_after(text)
    ordinary = [t for t in range(len(target)) if int(after_close[t].topk(8).indices.min()) > 5]
    assert len(ordinary) >= len(target) - 2
    for t in ordinary:  # rows with no special in the top-8 are stored exactly as computed
        want = after_close[t].topk(8)
        np.testing.assert_array_equal(stored.topk_ids[t], want.indices.numpy())
        np.testing.assert_allclose(stored.topk_logprobs[t], want.values.numpy(),
                                   atol=cache.meta.max_logprob_error + 1e-5)
    assert not np.array_equal(stored.topk_ids[ordinary], inside.topk(8).indices.numpy()[ordinary])
