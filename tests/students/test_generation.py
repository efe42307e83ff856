"""Generation: KV-cache decoding against a cache-free reference loop, repetition penalty as
transformers defines it, beams, and stopping on the end ids."""

from __future__ import annotations

import pytest
import torch

from students.prompting import assemble_inputs


@pytest.fixture(scope="module")
def prompt(student, noise):
    # Different instruction lengths: the batch is left-padded for decoding.
    return student.processor([noise(1), noise(2, 1)], ["Say it.", "Describe the sound in detail."])


def reference_decode(student, batch, steps, penalty=1.0, end_ids=()):
    """Greedy decoding that recomputes the whole sequence every step (no cache), applying the
    repetition penalty by its definition: a generated token's logit is divided by the penalty
    when positive, multiplied when negative."""
    with torch.no_grad():
        audio = student.encode_audio(batch)
        inputs = assemble_inputs(
            student.embed_tokens, audio, batch, padding_side="left", with_targets=False
        )
        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        out = torch.empty(embeds.size(0), 0, dtype=torch.long)
        done = torch.zeros(embeds.size(0), dtype=torch.bool)
        for _ in range(steps):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = student.causal_lm(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions
            ).logits[:, -1]
            if penalty != 1.0 and out.numel():
                seen = logits.gather(1, out)
                logits = logits.scatter(
                    1, out, torch.where(seen < 0, seen * penalty, seen / penalty)
                )
            token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, student.pad_id), token)
            out = torch.cat([out, token[:, None]], dim=1)
            done |= torch.isin(token, torch.tensor(list(end_ids), dtype=torch.long))
            embeds = torch.cat([embeds, student.embed_tokens(token)[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if done.all():
                break
    return out


# generate() decodes as the evaluation does (DecodingConfig: beams, penalty) unless told otherwise.
GREEDY = {"num_beams": 1, "repetition_penalty": 1.0}


def test_greedy_with_cache_matches_reference(student, prompt):
    generated = student.generate(prompt, max_new_tokens=6, **GREEDY)
    assert torch.equal(generated, reference_decode(student, prompt, 6))


@pytest.fixture(scope="module")
def parrot(make_cfg, models_dir, tokenizer, tiny_llama_factory):
    """A tiny LLaMA whose layers add nothing (o_proj, down_proj = 0): with tied embeddings the
    next token is the current one, so greedy decoding repeats one token forever."""
    from transformers import LlamaForCausalLM

    from students import SalmonnStudent

    path = tiny_llama_factory(models_dir / "parrot", tokenizer)
    model = LlamaForCausalLM.from_pretrained(path)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    model.save_pretrained(path)
    return SalmonnStudent.from_config(make_cfg(beats=False, llm={"name_or_path": str(path)})).eval()


def test_repetition_penalty_as_transformers_defines_it(parrot, noise):
    prompt = parrot.processor([noise(1), noise(1, 1)], ["Say it.", "Describe the sound."])
    plain = parrot.generate(prompt, max_new_tokens=6, **GREEDY)
    assert torch.equal(plain, reference_decode(parrot, prompt, 6))
    assert all(len(set(row)) == 1 for row in plain.tolist())  # the parrot repeats
    penalised = parrot.generate(prompt, max_new_tokens=6, num_beams=1, repetition_penalty=3.0)
    assert torch.equal(penalised, reference_decode(parrot, prompt, 6, penalty=3.0))
    assert all(len(set(row)) > 1 for row in penalised.tolist())


def test_beam_search_finds_at_least_the_greedy_score(student, prompt):
    def logprob(ids):
        batch = {
            **prompt,
            "target_ids": ids,
            "target_lengths": torch.full((len(ids),), ids.size(1)),
        }
        with torch.no_grad():
            out = student(batch, return_logits=True)
        picked = out.logits.log_softmax(-1).gather(-1, out.labels.clamp(min=0)[..., None])[..., 0]
        return (picked * (out.labels != -100)).sum(-1)

    greedy = student.generate(prompt, max_new_tokens=4, **GREEDY)
    beams = student.generate(prompt, max_new_tokens=4, num_beams=3, length_penalty=0.0,
                             repetition_penalty=1.0)
    assert beams.shape == greedy.shape == (2, 4)
    assert torch.all(logprob(beams) >= logprob(greedy) - 1e-4)


def test_generation_stops_at_an_end_id(student, prompt):
    """Make a token the decoder produces at step n an end id: decoding must stop right there."""
    free = reference_decode(student, prompt, 8, penalty=1.5)
    row = free[0].tolist()
    step = next(n for n in range(2, 8) if row[n] not in row[:n])
    end = row[step]
    saved = student.end_ids
    student.end_ids = [end]
    try:
        stopped = student.generate(prompt, max_new_tokens=8, num_beams=1,
                                   repetition_penalty=1.5)
    finally:
        student.end_ids = saved
    expected = reference_decode(student, prompt, 8, penalty=1.5, end_ids=[end])
    assert stopped[0, : step + 1].tolist() == row[: step + 1]
    assert torch.all(stopped[0, step + 1 :] == student.pad_id)
    assert torch.equal(stopped, expected[:, : stopped.size(1)])
    student.processor.end_ids, saved_proc = [end], student.processor.end_ids
    try:
        text = student.processor.decode(stopped[:1])[0]
    finally:
        student.processor.end_ids = saved_proc
    assert text == student.tokenizer.decode(row[:step], skip_special_tokens=True)


def test_default_decoding_is_the_evaluation_decoding(student, prompt):
    """One definition: generate() without a decoding section decodes as DecodingConfig()."""
    from students.config import DecodingConfig

    default = student.generate(prompt, max_new_tokens=4)
    explicit = student.generate(prompt, DecodingConfig(max_new_tokens=4))
    assert torch.equal(default, explicit)
    assert DecodingConfig().num_beams == 4 and DecodingConfig().repetition_penalty == 1.5
